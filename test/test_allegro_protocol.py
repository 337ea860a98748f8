"""Allegro V4 CAN frames: known byte layouts, round trips, and bad frames never raising."""
import math
import random

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allegro_driver import protocol as P


def test_known_layouts_match_the_v4_api():
    # arbitration id = command << 2 | device id (Wonik pcan.cpp: CanMsg.ID = (id << 2) | CAN_ID)
    m = P.encode_set_torque(2, [1, -1, 300, -32768], device_id=1)
    assert m.arbitration_id == (0x62 << 2) | 1 == 0x189
    assert not m.is_extended_id
    assert bytes(m.data) == bytes([0x01, 0x00, 0xFF, 0xFF, 0x2C, 0x01, 0x00, 0x80])

    assert P.encode_system_on().arbitration_id == 0x100 and len(P.encode_system_on().data) == 0
    assert P.encode_system_off().arbitration_id == 0x104
    assert bytes(P.encode_set_period(3, 0, 500).data) == bytes([3, 0, 0, 0, 0xF4, 0x01])
    assert P.encode_set_period(3).arbitration_id == 0x81 << 2
    assert bytes(P.encode_config(new_device_id=2).data) == bytes([0x82, 0, 0, 0, 0, 0])
    rtr = P.encode_request(P.FINGER_POSE + 3)
    assert rtr.is_remote_frame and rtr.arbitration_id == 0x23 << 2 and rtr.dlc == 0

    pose = can.Message(arbitration_id=0x21 << 2, data=bytes([0x10, 0x00, 0xF0, 0xFF, 0, 0, 0xFF, 0x7F]),
                       is_extended_id=False)
    assert P.decode(pose) == P.FingerPose(1, (16, -16, 0, 32767), 0)

    # frames from a public candump of a real V4 hand: HAND_INFO (id 0x200) and temperatures (0x0E0)
    info = can.Message(arbitration_id=0x200, data=bytes.fromhex("02040604003C05"), is_extended_id=False)
    hi = P.decode(info)
    assert (hi.hardware_version, hi.firmware_version, hi.hand, hi.temperature) == (0x0402, 0x0406, "right", 60)
    assert hi.servo_on and not hi.temperature_fault and hi.status == 5
    left = can.Message(arbitration_id=0x200, data=bytes([2, 4, 6, 4, 1, 30, 2]), is_extended_id=False)
    assert P.decode(left).hand == "left" and P.decode(left).temperature_fault

    temp = can.Message(arbitration_id=0x0E0, data=bytes.fromhex("2B2A2925"), is_extended_id=False)
    assert P.decode(temp) == P.Temperature(0, (43, 42, 41, 37), 0)
    dumped_torque = can.Message(arbitration_id=0x18C, data=bytes.fromhex("5802 0500 8DFF FAFF"), is_extended_id=False)
    assert P.decode(dumped_torque) == P.SetTorque(3, (600, 5, -115, -6), 0)
    imu = can.Message(arbitration_id=0x30 << 2, data=bytes([0x01, 0x02, 0xFF, 0xFE, 0, 5]), is_extended_id=False)
    assert P.decode(imu) == P.Imu(0x0102, -2, 5, 0)
    assert P.decode(P.encode_serial("SAH040R9")) == P.Serial("SAH040R9", 0)


def test_encoder_scale():
    assert P.counts_to_rad(65536) == pytest.approx(math.radians(333.3))
    assert P.rad_to_counts(math.radians(333.3 / 65536 * 1234)) == 1234
    assert P.rad_to_counts(1e6) == 32767 and P.rad_to_counts(-1e6) == -32768


@pytest.mark.parametrize("msg", [
    P.encode_system_on(3), P.encode_system_off(), P.encode_set_torque(0, [5, 6, 7, 8]),
    P.encode_set_period(3, 10, 1000, 2), P.encode_config(1, 115200), P.encode_hand_info(4, 0x200, "right", 40, 1),
    P.encode_serial("ABC"), P.encode_finger_pose(3, [-5, 0, 5, 100]), P.encode_imu(1, -1, 300),
    P.encode_temperature(3, [20, 30, 40, 255]), P.encode_request(P.TEMPERATURE + 1, 2),
])
def test_round_trip(msg):
    frame = P.decode(msg)
    again = {
        P.SystemOn: lambda f: P.encode_system_on(f.device_id),
        P.SystemOff: lambda f: P.encode_system_off(f.device_id),
        P.SetTorque: lambda f: P.encode_set_torque(f.block, f.pwm, f.device_id),
        P.SetPeriod: lambda f: P.encode_set_period(f.position_ms, f.imu_ms, f.temperature_ms, f.device_id),
        P.Config: lambda f: P.encode_config(f.new_device_id, f.rs485_baudrate, f.device_id),
        P.HandInfo: lambda f: P.encode_hand_info(f.hardware_version, f.firmware_version, f.hand,
                                                 f.temperature, f.status, f.device_id),
        P.Serial: lambda f: P.encode_serial(f.text, f.device_id),
        P.FingerPose: lambda f: P.encode_finger_pose(f.block, f.counts, f.device_id),
        P.Imu: lambda f: P.encode_imu(f.roll, f.pitch, f.yaw, f.device_id),
        P.Temperature: lambda f: P.encode_temperature(f.block, f.celsius, f.device_id),
        P.Request: lambda f: P.encode_request(f.command, f.device_id),
    }[type(frame)](frame)
    assert again.arbitration_id == msg.arbitration_id
    assert bytes(again.data) == bytes(msg.data)
    assert again.is_remote_frame == msg.is_remote_frame


def test_encoders_reject_bad_values():
    with pytest.raises(ValueError):
        P.encode_set_torque(4, [0, 0, 0, 0])
    with pytest.raises(ValueError):
        P.encode_set_torque(0, [0, 0, 0])
    with pytest.raises(ValueError):
        P.encode_set_torque(0, [40000, 0, 0, 0])
    with pytest.raises(ValueError):
        P.encode_request(P.SYSTEM_ON)
    with pytest.raises(ValueError):
        P.encode_set_period(-1)


def test_bad_frames_are_counted_not_raised():
    counter = P.FrameCounter()
    bad = [
        can.Message(arbitration_id=0x20 << 2, data=bytes(5), is_extended_id=False),  # truncated pose
        can.Message(arbitration_id=0x60 << 2, data=bytes(2), is_extended_id=False),  # truncated torque
        can.Message(arbitration_id=0x7F << 2, data=bytes(8), is_extended_id=False),  # unknown command
        can.Message(arbitration_id=0x1234567, data=bytes(8), is_extended_id=True),  # extended id
        can.Message(arbitration_id=0x80 << 2, data=bytes([4, 0, 1, 1, 9, 30, 0]), is_extended_id=False),  # hand 9
        can.Message(is_error_frame=True),
        can.Message(arbitration_id=0x41 << 2, is_remote_frame=True, is_extended_id=False),  # RTR of a command
    ]
    for m in bad:
        assert counter.decode(m) is None
    assert counter.counts == {"ok": 0, "truncated": 2, "unknown": 3, "malformed": 2}
    assert counter.decode(P.encode_finger_pose(0, [1, 2, 3, 4])) is not None
    assert counter.counts["ok"] == 1 and counter.bad == 7


def _random_message(rnd: random.Random) -> can.Message:
    extended = rnd.random() < 0.1
    return can.Message(arbitration_id=rnd.getrandbits(29 if extended else 11), is_extended_id=extended,
                       is_remote_frame=rnd.random() < 0.1, data=rnd.randbytes(rnd.randint(0, 8)),
                       is_error_frame=rnd.random() < 0.01)


@settings(max_examples=300, deadline=None)
@given(arb=st.integers(0, 0x7FF), data=st.binary(max_size=8), remote=st.booleans(), ext=st.booleans())
def test_decode_never_raises_anything_but_protocol_errors(arb, data, remote, ext):
    msg = can.Message(arbitration_id=arb, data=data, is_remote_frame=remote, is_extended_id=ext)
    try:
        frame = P.decode(msg)
    except P.ProtocolError:
        return
    # whatever decodes must be a frame type with a device id taken from the low 2 id bits
    assert frame.device_id == arb & 3


@pytest.mark.slow
def test_fuzz_100k_random_frames():
    from allegro_driver.bench import fuzz

    result = fuzz(100_000, progress=False)  # raises if any frame escaped the counters
    counts = result["fuzz_counts"]
    assert sum(counts.values()) == 100_000
    # the generator aims half of the ids at real commands: every outcome class must be exercised
    assert min(counts.values()) > 1000, counts
