"""ksefd: a daemon that connects file-based ERPs to KSeF API 2.0."""

__version__ = "0.1.0"
