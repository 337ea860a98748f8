"""Logging an outcome that may be good or bad through an rclpy logger."""
from __future__ import annotations


def log_outcome(logger, ok: bool, message: str) -> None:
    """Info when ``ok``, else a warning. One call site per severity: rclpy raises ValueError when
    one call site logs at two severities."""
    if ok:
        logger.info(message)
    else:
        logger.warning(message)
