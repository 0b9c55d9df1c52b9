"""The table CRC-8 of KSeF and reference numbers (ksefd/sim/ids.py) is the bitwise one (PROTOCOL.md §4.7)."""

from __future__ import annotations

import datetime as dt
import random

from ksefd.sim import ids


def test_table_crc8_is_the_bitwise_crc8() -> None:
    assert ids.crc8(b"123456789") == ids.crc8_bitwise(b"123456789") == 0xF4     # CRC-8/SMBUS check value
    rng = random.Random(16)
    for size in range(0, 64):
        data = rng.randbytes(size)
        assert ids.crc8(data) == ids.crc8_bitwise(data)
    now = dt.datetime.now(dt.UTC)
    assert ids.is_valid_ksef_number(ids.ksef_number("9999999999", now))
    assert ids.is_valid_reference(ids.reference_number("EE", now))
