"""builtin_interfaces Time/Duration <-> float seconds, the conversions every node needs."""
from __future__ import annotations

import math

from builtin_interfaces.msg import Duration


def seconds(msg) -> float:
    """Seconds of a builtin_interfaces/Time or /Duration message (anything with sec and nanosec)."""
    return msg.sec + msg.nanosec * 1e-9


def duration(value: float) -> Duration:
    """builtin_interfaces/Duration of ``value`` seconds (>= 0)."""
    sec = int(math.floor(value))
    return Duration(sec=sec, nanosec=min(int(round((value - sec) * 1e9)), 999_999_999))
