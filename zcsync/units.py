"""rsync's size suffixes: K/M/G/T/P (powers of 1024), KB/MB/... (1000), KiB/MiB/... (1024), +1/-1."""
from __future__ import annotations

import re
import time

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


def parse_stop_at(text: str, now: float) -> int:
    """rsync's --stop-at=[[[YY]YY-]MM-]DD][Th:m]: the next time after `now` (epoch seconds)
    that matches what is given, in the local timezone, as rsync's parse_time finds it.

    A missing time is midnight; a missing date part is the next one that matches ("14:00"
    is the next 2 PM, "31" the next month's 31st, ":59" the next 59th minute); a 2-digit
    year is this century's; '/' may stand for '-'. Raises ValueError if malformed.
    """
    year = mon = mday = hour = minute = -1
    pos = 0
    if text[:1] in ("T", "t", ":"):
        in_date = 0 if text[0] == ":" else -1
        pos = 1
    else:
        in_date = 1
    while True:  # the numbers, right to left into day / month / year and minute / hour
        start = pos
        while pos < len(text) and text[pos] in "0123456789":
            pos += 1
        if pos == start:
            raise ValueError(text)
        n = int(text[start:pos])
        sep = text[pos:pos + 1]
        if sep == ":":
            in_date = 0
        if in_date > 0:
            if year != -1:
                raise ValueError(text)
            year, mon, mday = mon, mday, n
            if not sep or (sep in ("T", "t") and pos + 1 == len(text)):
                break
            if sep in ("T", "t"):
                in_date = -1
            elif sep not in ("-", "/"):
                raise ValueError(text)
            pos += 1
            continue
        if hour != -1:
            raise ValueError(text)
        hour, minute = minute, n
        if not sep:
            if in_date < 0:
                raise ValueError(text)
            break
        if sep != ":":
            raise ValueError(text)
        in_date = 0
        pos += 1
    today = time.localtime(now)
    roll = 0  # which part moves forward until the time is in the future: 1 year, 2 month, 3 day
    if year < 0:
        year, roll = today.tm_year, 1
    elif year < 100:
        year += 1900
        while year < today.tm_year:
            year += 100
    if mon < 0:
        mon, roll = today.tm_mon, 2
    if mday < 0:
        mday, roll = today.tm_mday, 3
    step = 0
    if minute < 0:
        hour = minute = 0
    elif hour < 0:  # ":MM": the next such minute of any hour
        if roll != 3:
            raise ValueError(text)
        roll, hour, step = 0, today.tm_hour, 3600
    if hour > 23 or minute > 59 or not 1 <= mon <= 12 or not 1 <= mday <= 31:
        raise ValueError(text)
    wanted_mday = mday
    val, (year, mon, mday) = _mktime(year, mon, mday, hour, minute)
    while roll and (val <= now or mday < wanted_mday):
        if roll == 3:
            mday += 1
            wanted_mday = mday
        elif roll == 2:
            if mday < wanted_mday:  # past the end of a short month: the next month already
                mday = wanted_mday
            else:
                mon += 1
        else:
            if mday < wanted_mday:  # 29 February became 1 March: only a leap year has it
                if mon != 3 or wanted_mday != 29:
                    raise ValueError(text)
                mon, mday = 2, 29
            year += 1
        val, (year, mon, mday) = _mktime(year, mon, mday, hour, minute)
    while step and val <= now:
        val += step
    return val


def _mktime(year: int, mon: int, mday: int, hour: int, minute: int) -> tuple[int, tuple[int, int, int]]:
    """mktime(3) of a local time (out-of-range days and months roll over, as in C), and the
    date it normalised to."""
    try:
        val = int(time.mktime((year, mon, mday, hour, minute, 0, 0, 0, -1)))
    except (OverflowError, ValueError):
        raise ValueError("time out of range") from None
    t = time.localtime(val)
    return val, (t.tm_year, t.tm_mon, t.tm_mday)
