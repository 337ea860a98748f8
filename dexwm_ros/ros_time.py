"""builtin_interfaces Time/Duration -> float seconds, the one conversion every node needs."""
from __future__ import annotations


def seconds(msg) -> float:
    """Seconds of a builtin_interfaces/Time or /Duration message (anything with sec and nanosec)."""
    return msg.sec + msg.nanosec * 1e-9
