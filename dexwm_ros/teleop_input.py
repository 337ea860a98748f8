"""Teleop input (ROS-free): single keys from a terminal, and what a key, a joystick button or the
joystick's axes ask for."""
from __future__ import annotations

import os
import select
import sys

import numpy as np

# key -> (translation direction (3,), rotation axis (3,) in the world frame)
KEY_JOGS = {
    "w": ((1, 0, 0), None), "s": ((-1, 0, 0), None),
    "a": ((0, 1, 0), None), "d": ((0, -1, 0), None),
    "r": ((0, 0, 1), None), "f": ((0, 0, -1), None),
    "q": (None, (0, 0, 1)), "e": (None, (0, 0, -1)),
    "t": (None, (0, 1, 0)), "y": (None, (0, -1, 0)),
}
KEY_ACTIONS = {"o": "open", "c": "close", "g": "capture", " ": "stop", "h": "help",
               "n": "append", "l": "list", "x": "clear"}
JOY_BUTTONS = {0: "close", 1: "open", 2: "capture", 3: "stop", 4: "append"}


def key_jog(key: str, step_m: float, step_rad: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(translation [m], rotation vector [rad]) a jog key asks for, None for another key."""
    if key.lower() not in KEY_JOGS:
        return None
    direction, axis = KEY_JOGS[key.lower()]
    zero = np.zeros(3)
    if direction is not None:
        return step_m * np.asarray(direction, float), zero
    return zero, step_rad * np.asarray(axis, float)


def joy_jog(axes, deadzone: float, step_m: float, step_rad: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The jog of the joystick's axes (None when they rest): left stick x forward / y left, right
    stick vertical z, right stick horizontal yaw."""
    if len(axes) < 3:
        return None
    a = [v if abs(v) > deadzone else 0.0 for v in list(axes)[:4]] + [0.0] * 4
    if not any(a[:4]):
        return None
    return step_m * np.array([a[1], a[0], a[2]]), step_rad * np.array([0.0, 0.0, a[3]])


def pressed_buttons(buttons, previous) -> list[str]:
    """The actions of the buttons pressed since the ``previous`` button states (None: none known)."""
    previous = list(previous or [])
    return [JOY_BUTTONS[i] for i, b in enumerate(buttons)
            if b and i in JOY_BUTTONS and (i >= len(previous) or not previous[i])]


class KeyboardReader:
    """Non-blocking single-key reads from a terminal in cbreak mode (restored on close)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.fd = None
        self._saved = None
        if self.stream.isatty():
            import termios
            import tty

            self.fd = self.stream.fileno()
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    @property
    def active(self) -> bool:
        return self.fd is not None

    def read(self) -> list[str]:
        if self.fd is None:
            return []
        keys = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 32)
            if not data:
                break
            keys.extend(data.decode(errors="ignore"))
        return keys

    def close(self):
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None
