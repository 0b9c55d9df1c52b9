"""`ksefd run` keeps what start-up built out of the cyclic garbage collector (issue #16: its full passes over
tens of MB of modules were a tenth of the CPU an online invoice cost)."""

from __future__ import annotations

import gc

from ksefd.cli import freeze_startup_objects


def test_startup_objects_are_frozen_and_later_garbage_is_still_collected() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > before
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1              # a cycle made after start-up is still found
    finally:
        gc.unfreeze()
