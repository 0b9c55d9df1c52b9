"""One fresh process of the FA(3) schema race (issue #15 point 6): a check thread parses invoices while
the main thread compiles the schema. Exit status 0 when the compile succeeded, 1 (and the error) when
it failed.

    python -m tests.support.schema_race [plain]

With `plain` the thread parses with plain lxml, as any other code in the daemon may (the client reading
a UPO); without, through `ksefd.invoice.schema.parse`, as a check thread does. The race is in the first
compile, which loads the includes, so each try needs a fresh process: `benchmarks/schema_race.py` runs
many and prints the failure rate.
"""

from __future__ import annotations

import sys
import threading
from importlib.resources import files

from lxml import etree

from ksefd.invoice import fa3_schema, schema


def main(plain: bool) -> int:
    samples = [item.read_bytes() for item in files("ksefd").joinpath("data/samples").iterdir()
               if item.name.endswith(".xml")]
    stop = threading.Event()
    parsing = threading.Event()

    def parse_loop() -> None:
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        while not stop.is_set():
            for sample in samples:
                if plain:
                    etree.fromstring(sample, parser)
                else:
                    schema.parse(sample)
                parsing.set()

    thread = threading.Thread(target=parse_loop)
    thread.start()
    if plain:
        parsing.wait()   # (a check thread would wait for the compile: `schema.parse` compiles first)
    try:
        fa3_schema()
    except Exception as error:   # the failure is what this measures
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(plain=sys.argv[1:] == ["plain"]))
