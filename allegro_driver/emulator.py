"""An emulator of the Allegro Hand V4 firmware on a python-can bus: the test and demo peer of the
driver (``can_interface: virtual``), not part of the product.

It answers the protocol of ``protocol.py`` like the hand does: SYSTEM_ON/OFF switch the servos,
SET_PERIOD starts/stops streaming (positions every ``position_ms``, IMU and temperatures at their
own periods), remote requests are answered with HAND_INFO, SERIAL, FINGER_POSE, IMU or
TEMPERATURE, SET_TORQUE frames drive the joints. Each joint is a damped second-order system
``J * ddq = tau - b * dq`` integrated with 0.5 ms semi-implicit Euler steps; the joint limits are
hard stops. Each motor's temperature rises with its squared PWM and relaxes to ambient.

As a safety net like the firmware's, PWM falls back to zero when no SET_TORQUE frame arrived for
``torque_timeout_s``.
"""
from __future__ import annotations

import logging
import threading
import time

import can
import numpy as np

from dexwm_robot import allegro as joints

from . import protocol

log = logging.getLogger(__name__)

N = joints.NUM_JOINTS


class HandEmulator:
    def __init__(self, bus: can.BusABC, *, hand: str = "right", device_id: int = 0,
                 serial: str = "EMU4R001", hardware_version: int = 0x0402,
                 firmware_version: int = 0x0101, initial_position=None,
                 inertia: float = 2.0e-4, damping: float = 0.01,
                 torque_to_pwm: float = protocol.TORQUE_TO_PWM_V4,
                 ambient_c: float = 30.0, torque_timeout_s: float = 0.1,
                 physics_dt: float = 0.0005, tick_s: float = 0.001) -> None:
        if hand not in ("right", "left"):
            raise ValueError(f"hand must be 'right' or 'left', got {hand!r}")
        self.bus = bus
        self.hand = hand
        self.device_id = device_id
        self.serial = serial
        self.hardware_version = hardware_version
        self.firmware_version = firmware_version
        self.inertia = inertia
        self.damping = damping
        self.torque_to_pwm = torque_to_pwm
        self.ambient_c = ambient_c
        self.torque_timeout_s = torque_timeout_s
        self.physics_dt = physics_dt
        self.tick_s = tick_s
        q0 = joints.OPEN_POSE if initial_position is None else initial_position
        self._q = joints.clamp(np.asarray(q0, dtype=np.float64)).copy()
        self._dq = np.zeros(N)
        self._pwm = np.zeros(N)
        self._external_torque = np.zeros(N)
        self._temps = np.full(N, ambient_c)
        self._servo_on = False
        self._periods = [0, 0, 0]  # position, imu, temperature [ms]
        self._last_torque_time = -1e9
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.decoder = protocol.FrameCounter()
        self.streaming_enabled = True  # tests switch this off to starve the driver's watchdog
        self.torque_frames = 0
        self.pose_frames_sent = 0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "HandEmulator":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="allegro-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- test access -------------------------------------------------------------------------
    @property
    def position(self) -> np.ndarray:
        with self._lock:
            return self._q.copy()

    @property
    def pwm(self) -> np.ndarray:
        with self._lock:
            return self._pwm.copy()

    @property
    def servo_on(self) -> bool:
        with self._lock:
            return self._servo_on

    @property
    def periods_ms(self) -> tuple[int, int, int]:
        with self._lock:
            return tuple(self._periods)

    def set_external_torque(self, tau) -> None:
        """A disturbance [Nm] (e.g. an object pushing a finger)."""
        with self._lock:
            self._external_torque = np.asarray(tau, dtype=np.float64).reshape(N).copy()

    # --- firmware ----------------------------------------------------------------------------
    def _run(self) -> None:
        now = time.monotonic()
        last_physics = now
        next_due = [now, now, now]
        while not self._stop.is_set():
            now = time.monotonic()
            self._drain(now)
            self._integrate(now - last_physics, now)
            last_physics = now
            with self._lock:
                periods = list(self._periods)
            for i, period_ms in enumerate(periods):
                if period_ms <= 0:
                    next_due[i] = now
                    continue
                if now >= next_due[i]:
                    # keep the phase (firmware timer), but do not burst after a stall
                    next_due[i] = max(next_due[i] + period_ms / 1e3, now)
                    if self.streaming_enabled:
                        (self._send_poses, self._send_imu, self._send_temperatures)[i]()
            wait = min([d for d, p in zip(next_due, periods) if p > 0] + [now + self.tick_s]) - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _drain(self, now: float) -> None:
        for _ in range(512):
            try:
                msg = self.bus.recv(timeout=0.0)
            except (can.CanError, OSError):
                return
            if msg is None:
                return
            frame = self.decoder.decode(msg)
            if frame is None or frame.device_id != self.device_id:
                continue
            self._handle(frame, now)

    def _handle(self, frame, now: float) -> None:
        P = protocol
        if isinstance(frame, P.SystemOn):
            with self._lock:
                self._servo_on = True
        elif isinstance(frame, P.SystemOff):
            with self._lock:
                self._servo_on = False
                self._pwm[:] = 0
        elif isinstance(frame, P.SetTorque):
            with self._lock:
                self._pwm[4 * frame.block:4 * frame.block + 4] = frame.pwm
                self._last_torque_time = now
                self.torque_frames += 1
        elif isinstance(frame, P.SetPeriod):
            with self._lock:
                self._periods = [frame.position_ms, frame.imu_ms, frame.temperature_ms]
        elif isinstance(frame, P.Config):
            if frame.new_device_id is not None:
                self.device_id = frame.new_device_id
        elif isinstance(frame, P.Request):
            cmd = frame.command
            if cmd == P.HAND_INFO:
                self._send(self._hand_info())
            elif cmd == P.SERIAL:
                self._send(P.encode_serial(self.serial, self.device_id))
            elif P.FINGER_POSE <= cmd < P.FINGER_POSE + P.NUM_BLOCKS:
                self._send_poses(blocks=[cmd - P.FINGER_POSE])
            elif cmd == P.IMU:
                self._send_imu()
            else:
                self._send_temperatures(blocks=[cmd - P.TEMPERATURE])
        # frames a hand does not act on (replies of another hand, ...) are ignored like firmware does

    def _hand_info(self) -> can.Message:
        with self._lock:
            status = 0x01 if self._servo_on else 0x00
            if np.max(self._temps) > 70.0:
                status |= 0x02
            temp = int(round(float(np.max(self._temps))))
        return protocol.encode_hand_info(self.hardware_version, self.firmware_version, self.hand,
                                         temp, status, self.device_id)

    def _integrate(self, elapsed: float, now: float) -> None:
        elapsed = min(max(elapsed, 0.0), 0.02)  # after a stall, do not integrate a huge step
        with self._lock:
            if not self._servo_on or now - self._last_torque_time > self.torque_timeout_s:
                self._pwm[:] = 0
            tau = self._pwm / self.torque_to_pwm + self._external_torque
            steps = max(1, int(np.ceil(elapsed / self.physics_dt)))
            h = elapsed / steps
            q, dq = self._q, self._dq
            for _ in range(steps):
                dq += h * (tau - self.damping * dq) / self.inertia
                q += h * dq
                low, high = q < joints.LOWER, q > joints.UPPER
                # hard stops: the joint stays at the limit and loses the velocity into it
                dq[(low & (dq < 0)) | (high & (dq > 0))] = 0.0
                np.clip(q, joints.LOWER, joints.UPPER, out=q)
            # motor heating ~ PWM^2 with a 30 s thermal time constant
            target = self.ambient_c + 60.0 * (self._pwm / 1200.0) ** 2
            self._temps += (target - self._temps) * min(1.0, elapsed / 30.0)

    def _send(self, msg: can.Message) -> None:
        try:
            self.bus.send(msg, timeout=0.002)
        except (can.CanError, OSError):
            pass  # a real hand drops frames on a full bus too

    def _send_poses(self, blocks=range(protocol.NUM_BLOCKS)) -> None:
        with self._lock:
            counts = np.rint(self._q / protocol.RAD_PER_COUNT).astype(int)
        for k in blocks:
            self._send(protocol.encode_finger_pose(k, counts[4 * k:4 * k + 4], self.device_id))
            self.pose_frames_sent += 1

    def _send_imu(self) -> None:
        self._send(protocol.encode_imu(0, 0, 0, self.device_id))  # a hand at rest, level

    def _send_temperatures(self, blocks=range(protocol.NUM_BLOCKS)) -> None:
        with self._lock:
            temps = np.rint(self._temps).astype(int)
        for k in blocks:
            self._send(protocol.encode_temperature(k, temps[4 * k:4 * k + 4], self.device_id))
