"""The hand's health as text: the level and key/value pairs the allegro node puts on /diagnostics."""
from __future__ import annotations

import math

import numpy as np

from dexwm_robot import allegro as joints

from .controller import HandStatus, State

OK, WARN, ERROR = "ok", "warn", "error"


def health(st: HandStatus, temperature_warn_c: float) -> tuple[str, str]:
    """(level, message) of the hand: errors, then torque-off/start-up, then hot motors."""
    if st.state is State.ERROR:
        return ERROR, st.reason
    if st.state in (State.INIT, State.STOPPED):
        return WARN, st.reason or st.state.value
    if np.any(st.temperatures > temperature_warn_c):  # NaN (not yet reported) compares False
        return WARN, f"motor temperature above {temperature_warn_c:.0f} C"
    return OK, st.state.value


def status_values(st: HandStatus, hand: str, kp: np.ndarray, kd: np.ndarray) -> dict[str, str]:
    """Everything worth reading when the hand misbehaves: loop timing, bus counters, temperatures,
    and the gains in force (to confirm a live change)."""
    t = st.timing
    info = st.hand_info
    values = {
        "state": st.state.value,
        "hand": hand,
        "hand_info": (f"hw 0x{info.hardware_version:04x} fw 0x{info.firmware_version:04x} "
                      f"{info.hand} servo {'on' if info.servo_on else 'off'}" if info else "not received"),
        "encoder_age_ms": f"{st.encoder_age_s * 1e3:.1f}",
        "command_age_s": f"{st.command_age_s:.2f}" if math.isfinite(st.command_age_s) else "none",
        "command_stale": str(st.command_stale),
        "loop_period_error_ms_mean": f"{t.period_error_ms_mean:.3f}",
        "loop_period_error_ms_p99": f"{t.period_error_ms_p99:.3f}",
        "loop_period_error_ms_max": f"{t.period_error_ms_max:.3f}",
        "loop_work_ms_mean": f"{t.work_ms_mean:.3f}",
        "loop_overruns": str(t.overruns),
        "loop_scheduling": st.scheduling,
        "can_frames_ok": str(st.frames["ok"]),
        "can_frames_truncated": str(st.frames["truncated"]),
        "can_frames_unknown": str(st.frames["unknown"]),
        "can_frames_malformed": str(st.frames["malformed"]),
        "can_last_frame_error": st.last_frame_error,
        "can_tx_errors": str(st.tx_errors),
        "encoder_dropouts": str(st.encoder_dropouts),
        "commands_rejected": str(st.commands_rejected),
        "last_reject_reason": st.last_reject_reason,
        "kp": " ".join(f"{v:g}" for v in kp),
        "kd": " ".join(f"{v:g}" for v in kd),
    }
    for k, finger in enumerate(joints.FINGERS):  # hottest motor per finger, and all 16
        block = st.temperatures[4 * k:4 * k + 4]
        values[f"temperature_{finger}_max_c"] = "nan" if np.isnan(block).all() else f"{np.nanmax(block):.0f}"
    values["temperatures_c"] = " ".join("nan" if math.isnan(c) else f"{c:.0f}" for c in st.temperatures)
    return values
