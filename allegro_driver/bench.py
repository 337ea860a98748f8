"""`dexwm-bench allegro [--json]`: PD loop timing at 333 Hz against the emulator, and a decoder fuzz.

1. Loop period error: the real HandController runs its 333 Hz loop against the firmware emulator on
   python-can's virtual bus (both in this process, as with ``can_interface:=virtual``) while
   tracking a moving target; reported as |measured period - 3.003 ms| (mean, p99, max). Baseline
   in the same run: an empty loop with the same pacing (sleep to an absolute deadline), which shows
   what the OS scheduler alone costs on this machine.
2. Fuzz: >= 100k random frames (random 11/29-bit ids, lengths 0..8, remote and error flags) through
   ``protocol.FrameCounter``; every one must be counted, none may raise. Throughput is compared to
   decoding valid FINGER_POSE frames.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import can
import numpy as np
from tqdm import tqdm

from dexwm_robot import allegro as joints

from . import protocol
from .controller import ControllerConfig, HandController, open_bus
from .emulator import HandEmulator


def _errors_ms(periods: np.ndarray, rate_hz: float) -> dict:
    err = np.abs(periods - 1.0 / rate_hz) * 1e3
    return {"mean": float(err.mean()), "p99": float(np.percentile(err, 99)), "max": float(err.max()),
            "samples": int(err.size)}


def baseline_loop(rate_hz: float, seconds: float) -> np.ndarray:
    """Periods of an empty loop paced like the controller's."""
    period = 1.0 / rate_hz
    periods, last = [], None
    next_tick = time.monotonic()
    end = next_tick + seconds
    while True:
        tick = time.monotonic()
        if tick > end:
            break
        if last is not None:
            periods.append(tick - last)
        last = tick
        next_tick += period
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return np.asarray(periods)


def controller_loop(rate_hz: float, seconds: float, realtime_priority: int = 0) -> tuple[np.ndarray, dict]:
    channel = f"allegro-bench-{os.getpid()}"
    emu_bus, bus = open_bus("virtual", channel), open_bus("virtual", channel)
    emu = HandEmulator(emu_bus).start()
    ctl = HandController(bus, ControllerConfig(control_rate_hz=rate_hz, realtime_priority=realtime_priority))
    try:
        ctl.start()
        time.sleep(0.3)  # start-up: info, first encoder burst
        t0 = time.monotonic()
        amplitude = 0.3 * (joints.UPPER - joints.LOWER)
        centre = 0.5 * (joints.UPPER + joints.LOWER)
        while (t := time.monotonic() - t0) < seconds:  # a 1 Hz sine on every joint, streamed at 50 Hz
            ctl.set_target(centre + amplitude * np.sin(2 * np.pi * t))
            time.sleep(0.02)
        n = int(seconds * rate_hz)
        periods = ctl.period_samples()[-n:]
        st = ctl.status()
        extra = {"loop_work_ms_mean": st.timing.work_ms_mean, "overruns": st.timing.overruns,
                 "can_frames_ok": st.frames["ok"], "state": st.state.value, "scheduling": st.scheduling,
                 "tracking_error_rad_max": float(np.max(np.abs(st.setpoint - st.position)))}
    finally:
        ctl.close()
        emu.close()
        emu_bus.shutdown()
        bus.shutdown()
    return periods, extra


def random_frames(n: int, seed: int = 0) -> list[can.Message]:
    rnd = random.Random(seed)
    # half of the ids are the hand's own commands (any device id) so that the payload parsers, not
    # just the id dispatch, see random lengths and bytes
    known = [protocol.SYSTEM_ON, protocol.SYSTEM_OFF, protocol.SET_PERIOD, protocol.CONFIG, protocol.HAND_INFO,
             protocol.SERIAL, protocol.IMU] + [base + k for base in (protocol.SET_TORQUE, protocol.FINGER_POSE,
                                                                    protocol.TEMPERATURE) for k in range(4)]
    out = []
    for _ in range(n):
        extended = rnd.random() < 0.05
        arb = rnd.getrandbits(29 if extended else 11)
        if not extended and rnd.random() < 0.5:
            arb = (rnd.choice(known) << 2) | rnd.getrandbits(2)
        out.append(can.Message(arbitration_id=arb, is_extended_id=extended,
                               is_remote_frame=rnd.random() < 0.05, is_error_frame=rnd.random() < 0.01,
                               data=rnd.randbytes(rnd.randint(0, 8))))
    return out


def fuzz(n: int, progress: bool = True) -> dict:
    counter = protocol.FrameCounter()
    chunk = 10_000
    decode_s = 0.0
    with tqdm(total=n, desc="fuzz frames", unit="frame", file=sys.stderr, disable=not progress) as bar:
        done = 0
        while done < n:
            frames = random_frames(min(chunk, n - done), seed=done)
            t = time.perf_counter()
            for m in frames:
                counter.decode(m)  # must never raise
            decode_s += time.perf_counter() - t
            done += len(frames)
            bar.update(len(frames))
    total = sum(counter.counts.values())
    if total != n:
        raise AssertionError(f"decoded {total} of {n} frames")
    valid = [protocol.encode_finger_pose(i % 4, [i, -i, 0, 1]) for i in range(chunk)]
    base = protocol.FrameCounter()
    t = time.perf_counter()
    for m in valid:
        base.decode(m)
    valid_rate = chunk / (time.perf_counter() - t)
    return {"fuzz_frames": n, "fuzz_counts": dict(counter.counts), "fuzz_frames_per_s": n / decode_s,
            "valid_frames_per_s": valid_rate, "fuzz_vs_valid_throughput": (n / decode_s) / valid_rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-bench allegro", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each timing run")
    ap.add_argument("--rate-hz", type=float, default=333.0)
    ap.add_argument("--fuzz-frames", type=int, default=100_000)
    ap.add_argument("--realtime-priority", type=int, default=0,
                    help="also time the loop with SCHED_FIFO at this priority (needs permission)")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.rate_hz <= 0 or args.fuzz_frames < 1:
        ap.error("--seconds, --rate-hz and --fuzz-frames must be positive")

    base = _errors_ms(baseline_loop(args.rate_hz, args.seconds), args.rate_hz)
    periods, extra = controller_loop(args.rate_hz, args.seconds)
    ctl = _errors_ms(periods, args.rate_hz)
    rt = None
    if args.realtime_priority > 0:
        rt_periods, rt_extra = controller_loop(args.rate_hz, args.seconds, args.realtime_priority)
        rt = {**_errors_ms(rt_periods, args.rate_hz), "scheduling": rt_extra["scheduling"]}
    fz = fuzz(args.fuzz_frames, progress=sys.stderr.isatty())
    result = {
        "rate_hz": args.rate_hz,
        "period_error_ms_mean": ctl["mean"],
        "period_error_ms_p99": ctl["p99"],
        "period_error_ms_max": ctl["max"],
        "period_samples": ctl["samples"],
        "baseline_period_error_ms_mean": base["mean"],
        "baseline_period_error_ms_p99": base["p99"],
        "p99_ratio_to_baseline": ctl["p99"] / base["p99"] if base["p99"] > 0 else float("inf"),
        **extra,
        **fz,
    }
    if rt is not None:
        result.update({"realtime_period_error_ms_mean": rt["mean"], "realtime_period_error_ms_p99": rt["p99"],
                       "realtime_scheduling": rt["scheduling"]})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"PD loop at {args.rate_hz:.0f} Hz against the emulator ({ctl['samples']} periods): "
              f"period error mean {ctl['mean']:.3f} ms, p99 {ctl['p99']:.3f} ms, max {ctl['max']:.3f} ms; "
              f"work {extra['loop_work_ms_mean']:.3f} ms/tick, overruns {extra['overruns']}")
        print(f"baseline empty loop: mean {base['mean']:.3f} ms, p99 {base['p99']:.3f} ms "
              f"-> p99 ratio {result['p99_ratio_to_baseline']:.2f}x")
        if rt is not None:
            print(f"PD loop with {rt['scheduling']}: period error mean {rt['mean']:.3f} ms, "
                  f"p99 {rt['p99']:.3f} ms, max {rt['max']:.3f} ms")
        print(f"fuzz: {fz['fuzz_frames']} random frames, none raised, counts {fz['fuzz_counts']}, "
              f"{fz['fuzz_frames_per_s']:.0f} frames/s ({fz['fuzz_vs_valid_throughput']:.2f}x valid-frame "
              f"decoding at {fz['valid_frames_per_s']:.0f} frames/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
