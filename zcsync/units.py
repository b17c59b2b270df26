"""rsync's size suffixes: K/M/G/T/P (powers of 1024), KB/MB/... (1000), KiB/MiB/... (1024), +1/-1."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([kmgtp]?)(i?b)?([+-]1)?$", re.IGNORECASE)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str, default_unit: str = "") -> int:
    """Parse a size as rsync's --max-size/--min-size/--bwlimit do; raises ValueError."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"Invalid size: {text!r}")
    number, unit, b, adjust = m.groups()
    unit = (unit or default_unit).lower()
    base = 1000 if b is not None and b.lower() == "b" and unit else 1024
    value = float(number) * base ** _POWER[unit]
    result = int(value)
    if adjust:
        result += int(adjust)
    return result
