"""Allegro Hand V4 CAN protocol: frame encoding and decoding (no I/O, no ROS).

Byte layouts, checked against Wonik Robotics' public V4 CAN API (allegro_hand_ros_v4:
``candrv/candef.h``, ``candrv/pcan.cpp`` and ``AllegroHandDrv.cpp``; allegro_hand_ros2:
``v4_sdk.cpp``) and a public candump of a V4 hand (Meta's python-can Allegro test script, which
records e.g. ``200 [7] 02 04 06 04 00 3C 05`` for HAND_INFO and ``0E0 [4] 2B 2A 29 25`` for the
index finger's temperatures):

Arbitration id (11-bit standard frame): ``(command << 2) | device_id``. The two low bits carry the
device id (0..3, set with CONFIG); the V4 driver strips them on receive (``(ID & ~3) >> 2``).

=================  ==========  =====  =============================================================
frame              command     dir    data (all multi-byte values little-endian)
=================  ==========  =====  =============================================================
SYSTEM_ON          0x40        h->d   empty: servo on (torque frames are applied)
SYSTEM_OFF         0x41        h->d   empty: servo off
SET_TORQUE         0x60 + f    h->d   8 bytes: 4 x int16 PWM duty for joints 0..3 of finger block f
SET_PERIOD         0x81        h->d   6 bytes: 3 x int16 streaming periods [ms] for
                                      (position, IMU, temperature); 0 = do not stream (some
                                      tools append a 4th "status" period: 8 bytes, accepted)
CONFIG             0x68        h->d   6 bytes: byte 0 = new device id | 0x80 (bit 7 = "set id");
                                      bytes 1..4 = RS-485 baud rate (uint32, bit 31 = "set baud")
HAND_INFO          0x80        d->h   7 bytes: hardware version (u16, 0x04xx on a V4), firmware
                                      version (u16), hand type (u8, 0 = right, 1 = left), palm
                                      temperature (u8, deg C), status (u8: bit0 servo on, bit1
                                      joint over-temperature fault; the meaning of the higher bits
                                      differs between sources: kept raw)
SERIAL             0x88        d->h   8 ASCII bytes
FINGER_POSE        0x20 + f    d->h   8 bytes: 4 x int16 encoder counts of finger block f
IMU                0x30        d->h   6 bytes: roll, pitch, yaw as int16; the V4 driver prints
                                      them high byte first, so they are decoded big-endian here
                                      (raw units: the V4 manual does not give a scale)
TEMPERATURE        0x38 + f    d->h   4 bytes: 4 x u8 motor temperatures [deg C] of the joints
                                      of finger block f (Wonik's ROS 2 SDK and the candump; the
                                      2016 ROS 1 driver printed them as one int32, which the dump
                                      contradicts)
=================  ==========  =====  =============================================================

HAND_INFO, SERIAL, FINGER_POSE, IMU and TEMPERATURE are also *requested* by the host with a remote
(RTR) frame of the same command and no data. Finger block f is 0 = index, 1 = middle, 2 = ring,
3 = thumb (see ``dexwm_robot.allegro``).

Units: encoder counts to angle ``333.3 / 65536`` degrees per count. Torque to PWM:
``pwm = torque [Nm] * 1200`` on the V4 (12 V) hand, clamped per joint (controller.py).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import can

# --- command ids (before the << 2 device-id shift) ----------------------------------------------
SYSTEM_ON = 0x40
SYSTEM_OFF = 0x41
SET_TORQUE = 0x60  # + finger block 0..3
SET_PERIOD = 0x81
CONFIG = 0x68
HAND_INFO = 0x80
SERIAL = 0x88
FINGER_POSE = 0x20  # + finger block 0..3
IMU = 0x30
TEMPERATURE = 0x38  # + finger block 0..3

NUM_BLOCKS = 4

DEG_PER_COUNT = 333.3 / 65536.0
RAD_PER_COUNT = math.radians(DEG_PER_COUNT)
TORQUE_TO_PWM_V4 = 1200.0  # 12 V V4 hand; 800 on the older 8 V hands
INT16_MIN, INT16_MAX = -32768, 32767

_FOUR_INT16 = struct.Struct("<4h")
_PERIOD = struct.Struct("<3h")
_HAND_INFO = struct.Struct("<HHBBB")
_IMU = struct.Struct(">3h")
_TEMPERATURE = struct.Struct("<4B")


class ProtocolError(ValueError):
    """A frame that cannot be decoded. ``kind`` groups errors for diagnostics counters."""

    kind = "malformed"


class UnknownFrame(ProtocolError):
    kind = "unknown"


class TruncatedFrame(ProtocolError):
    kind = "truncated"


class MalformedFrame(ProtocolError):
    kind = "malformed"


# --- decoded frames ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SystemOn:
    device_id: int = 0


@dataclass(frozen=True)
class SystemOff:
    device_id: int = 0


@dataclass(frozen=True)
class SetTorque:
    block: int
    pwm: tuple[int, int, int, int]
    device_id: int = 0


@dataclass(frozen=True)
class SetPeriod:
    position_ms: int
    imu_ms: int
    temperature_ms: int
    device_id: int = 0


@dataclass(frozen=True)
class Config:
    new_device_id: int | None
    rs485_baudrate: int | None
    device_id: int = 0


@dataclass(frozen=True)
class Request:
    """A remote (RTR) frame: the host asks for HAND_INFO, SERIAL, FINGER_POSE, IMU or TEMPERATURE."""

    command: int  # the full command id, e.g. FINGER_POSE + 2
    device_id: int = 0


@dataclass(frozen=True)
class HandInfo:
    hardware_version: int
    firmware_version: int
    hand: str  # "right" | "left"
    temperature: int
    status: int
    device_id: int = 0

    @property
    def servo_on(self) -> bool:
        return bool(self.status & 0x01)

    @property
    def temperature_fault(self) -> bool:
        return bool(self.status & 0x02)


@dataclass(frozen=True)
class Serial:
    text: str
    device_id: int = 0


@dataclass(frozen=True)
class FingerPose:
    block: int
    counts: tuple[int, int, int, int]
    device_id: int = 0


@dataclass(frozen=True)
class Imu:
    roll: int
    pitch: int
    yaw: int
    device_id: int = 0


@dataclass(frozen=True)
class Temperature:
    block: int
    celsius: tuple[int, int, int, int]  # joints 0..3 of the finger block
    device_id: int = 0


Frame = (SystemOn | SystemOff | SetTorque | SetPeriod | Config | Request | HandInfo | Serial
         | FingerPose | Imu | Temperature)

_REQUESTABLE = {HAND_INFO, SERIAL, IMU} | {FINGER_POSE + b for b in range(NUM_BLOCKS)} | {
    TEMPERATURE + b for b in range(NUM_BLOCKS)}


# --- unit conversion -----------------------------------------------------------------------------
def counts_to_rad(counts):
    """Encoder counts (int or array) -> radians."""
    return counts * RAD_PER_COUNT


def rad_to_counts(rad: float) -> int:
    """Radians -> nearest encoder count, saturated to int16."""
    return _saturate_int16(round(rad / RAD_PER_COUNT))


def _saturate_int16(value: int) -> int:
    return max(INT16_MIN, min(INT16_MAX, int(value)))


# --- encoding ------------------------------------------------------------------------------------
def arbitration_id(command: int, device_id: int = 0) -> int:
    if not 0 <= command <= 0x1FF:
        raise ValueError(f"command 0x{command:x} does not fit the 9-bit command field")
    if not 0 <= device_id <= 3:
        raise ValueError(f"device id {device_id} out of range 0..3")
    return (command << 2) | device_id


def split_arbitration_id(arb_id: int) -> tuple[int, int]:
    """(command, device_id) of a standard 11-bit arbitration id."""
    return arb_id >> 2, arb_id & 0x3


def _message(command: int, data: bytes = b"", device_id: int = 0) -> can.Message:
    return can.Message(arbitration_id=arbitration_id(command, device_id), data=data, is_extended_id=False)


def encode_system_on(device_id: int = 0) -> can.Message:
    return _message(SYSTEM_ON, b"", device_id)


def encode_system_off(device_id: int = 0) -> can.Message:
    return _message(SYSTEM_OFF, b"", device_id)


def _block(block: int) -> int:
    if not 0 <= int(block) < NUM_BLOCKS:
        raise ValueError(f"finger block {block} out of range 0..3")
    return int(block)


def _four_int16(values) -> bytes:
    values = [int(v) for v in values]
    if len(values) != 4:
        raise ValueError(f"expected 4 values per finger block, got {len(values)}")
    for v in values:
        if not INT16_MIN <= v <= INT16_MAX:
            raise ValueError(f"value {v} does not fit int16")
    return _FOUR_INT16.pack(*values)


def encode_set_torque(block: int, pwm, device_id: int = 0) -> can.Message:
    """SET_TORQUE for one finger block: 4 PWM duties (int16, already clamped by the caller)."""
    return _message(SET_TORQUE + _block(block), _four_int16(pwm), device_id)


def encode_set_period(position_ms: int, imu_ms: int = 0, temperature_ms: int = 0,
                      device_id: int = 0) -> can.Message:
    periods = (position_ms, imu_ms, temperature_ms)
    if any(not 0 <= int(p) <= INT16_MAX for p in periods):
        raise ValueError(f"periods must be 0..{INT16_MAX} ms, got {periods}")
    return _message(SET_PERIOD, _PERIOD.pack(*(int(p) for p in periods)), device_id)


def encode_config(new_device_id: int | None = None, rs485_baudrate: int | None = None,
                  device_id: int = 0) -> can.Message:
    data = bytearray(6)
    if new_device_id is not None:
        if not 0 <= new_device_id <= 3:
            raise ValueError(f"new device id {new_device_id} out of range 0..3")
        data[0] = new_device_id | 0x80
    if rs485_baudrate is not None:
        if not 0 < rs485_baudrate < 1 << 31:
            raise ValueError(f"RS-485 baud rate {rs485_baudrate} out of range")
        data[1:5] = struct.pack("<I", rs485_baudrate | 0x8000_0000)
    return _message(CONFIG, bytes(data), device_id)


def encode_request(command: int, device_id: int = 0) -> can.Message:
    """Remote (RTR) frame asking the hand for one of the requestable frames."""
    if command not in _REQUESTABLE:
        raise ValueError(f"command 0x{command:x} cannot be requested")
    return can.Message(arbitration_id=arbitration_id(command, device_id), is_remote_frame=True,
                       is_extended_id=False, dlc=0)


def encode_hand_info(hardware_version: int, firmware_version: int, hand: str, temperature: int,
                     status: int, device_id: int = 0) -> can.Message:
    if hand not in ("right", "left"):
        raise ValueError(f"hand must be 'right' or 'left', got {hand!r}")
    data = _HAND_INFO.pack(hardware_version, firmware_version, 0 if hand == "right" else 1,
                           max(0, min(255, int(temperature))), status)
    return _message(HAND_INFO, data, device_id)


def encode_serial(text: str, device_id: int = 0) -> can.Message:
    raw = text.encode("ascii")
    if len(raw) > 8:
        raise ValueError(f"serial {text!r} longer than 8 characters")
    return _message(SERIAL, raw.ljust(8, b" "), device_id)


def encode_finger_pose(block: int, counts, device_id: int = 0) -> can.Message:
    return _message(FINGER_POSE + _block(block), _four_int16(counts), device_id)


def encode_imu(roll: int, pitch: int, yaw: int, device_id: int = 0) -> can.Message:
    return _message(IMU, _IMU.pack(*(_saturate_int16(v) for v in (roll, pitch, yaw))), device_id)


def encode_temperature(block: int, celsius, device_id: int = 0) -> can.Message:
    """Motor temperatures [deg C] of the 4 joints of one finger block, saturated to 0..255."""
    values = [max(0, min(255, int(c))) for c in celsius]
    if len(values) != 4:
        raise ValueError(f"expected 4 temperatures per finger block, got {len(values)}")
    return _message(TEMPERATURE + _block(block), _TEMPERATURE.pack(*values), device_id)


# --- decoding ------------------------------------------------------------------------------------
def _need(data: bytes, n: int, name: str) -> None:
    if len(data) < n:
        raise TruncatedFrame(f"{name}: {len(data)} data bytes, need {n}")


def decode(msg: can.Message) -> Frame:
    """Decode one CAN message; raise a ProtocolError subclass (never anything else) when it is not
    a valid Allegro V4 frame. Extra trailing bytes are tolerated (the firmware pads some frames)."""
    if msg.is_error_frame:
        raise MalformedFrame("CAN error frame")
    if msg.is_extended_id:
        raise UnknownFrame(f"extended id 0x{msg.arbitration_id:x} (the hand uses 11-bit ids)")
    arb = msg.arbitration_id
    if not 0 <= arb <= 0x7FF:
        raise MalformedFrame(f"arbitration id 0x{arb:x} is not an 11-bit id")
    command, dev = split_arbitration_id(arb)
    data = bytes(msg.data or b"")

    if msg.is_remote_frame:
        if command in _REQUESTABLE:
            return Request(command, dev)
        raise UnknownFrame(f"remote frame for command 0x{command:x}")

    if command == SYSTEM_ON:
        return SystemOn(dev)
    if command == SYSTEM_OFF:
        return SystemOff(dev)
    if SET_TORQUE <= command < SET_TORQUE + NUM_BLOCKS:
        _need(data, 8, "SET_TORQUE")
        return SetTorque(command - SET_TORQUE, _FOUR_INT16.unpack_from(data), dev)
    if command == SET_PERIOD:
        if len(data) == 0:  # the V4 API sends zeros for "stop streaming"; accept empty the same way
            return SetPeriod(0, 0, 0, dev)
        _need(data, 6, "SET_PERIOD")
        p = _PERIOD.unpack_from(data)
        if min(p) < 0:
            raise MalformedFrame(f"SET_PERIOD: negative period {p}")
        return SetPeriod(*p, device_id=dev)
    if command == CONFIG:
        _need(data, 6, "CONFIG")
        new_id = data[0] & 0x3 if data[0] & 0x80 else None
        baud = struct.unpack_from("<I", data, 1)[0]
        return Config(new_id, baud & 0x7FFF_FFFF if baud & 0x8000_0000 else None, dev)
    if command == HAND_INFO:
        _need(data, 7, "HAND_INFO")
        hw, fw, hand_type, temp, status = _HAND_INFO.unpack_from(data)
        if hand_type not in (0, 1):
            raise MalformedFrame(f"HAND_INFO: hand type {hand_type} is neither 0 (right) nor 1 (left)")
        return HandInfo(hw, fw, "right" if hand_type == 0 else "left", temp, status, dev)
    if command == SERIAL:
        _need(data, 1, "SERIAL")
        return Serial(data[:8].decode("ascii", errors="replace").rstrip(" \x00"), dev)
    if FINGER_POSE <= command < FINGER_POSE + NUM_BLOCKS:
        _need(data, 8, "FINGER_POSE")
        return FingerPose(command - FINGER_POSE, _FOUR_INT16.unpack_from(data), dev)
    if command == IMU:
        _need(data, 6, "IMU")
        return Imu(*_IMU.unpack_from(data), device_id=dev)
    if TEMPERATURE <= command < TEMPERATURE + NUM_BLOCKS:
        _need(data, 4, "TEMPERATURE")
        return Temperature(command - TEMPERATURE, _TEMPERATURE.unpack_from(data), dev)
    raise UnknownFrame(f"unknown command 0x{command:x} (arbitration id 0x{arb:x})")


class FrameCounter:
    """Decodes frames and counts the bad ones instead of raising: a noisy bus must never stop the
    control loop. ``counts`` maps 'ok', 'truncated', 'unknown', 'malformed' to totals."""

    def __init__(self) -> None:
        self.counts = {"ok": 0, "truncated": 0, "unknown": 0, "malformed": 0}
        self.last_error = ""

    def decode(self, msg: can.Message) -> Frame | None:
        try:
            frame = decode(msg)
        except ProtocolError as exc:
            self.counts[exc.kind] += 1
            self.last_error = str(exc)
            return None
        self.counts["ok"] += 1
        return frame

    @property
    def bad(self) -> int:
        return self.counts["truncated"] + self.counts["unknown"] + self.counts["malformed"]
