"""How often the first FA(3) schema compile fails while another thread parses (issue #15 point 6).

    .venv/bin/python benchmarks/schema_race.py [--runs N]

Starts N fresh processes per mode (`tests/support/schema_race.py`: a check thread, or plain lxml, parsing
the samples while the main thread compiles) and prints how many failed. Figures, 2-core machine:
    before (lazy compile through an lxml Resolver): check-thread 6/40 and 3/40, plain-lxml 9/40 and 0/40
        in two runs (the rate swings with the machine's load: 0-22 %; the issue saw 16/40)
    after (compile from file paths, parse waits for the compile): 0/40 and 0/40 in each of three runs
tests/invoice/test_schema_race.py runs 2 x 12 fresh processes: on the old code it failed 3 runs out of 3.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys

import _common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    for mode in ([], ["plain"]):
        errors: collections.Counter[str] = collections.Counter()
        failed = 0
        for _ in range(args.runs):
            done = subprocess.run([sys.executable, "-m", "tests.support.schema_race", *mode], cwd=_common.ROOT,
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                failed += 1
                errors[done.stderr.strip()[:110]] += 1
        name = "plain-lxml" if mode else "check-thread"
        print(f"{name}: {failed}/{args.runs} fresh processes failed ({failed / args.runs:.0%})")
        for error, count in errors.most_common():
            print(f"    {count} x {error}")


if __name__ == "__main__":
    main()
