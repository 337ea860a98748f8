"""dexwm-bench camera: 640x480 rgb8 images at 30 Hz from one process to a subscriber in another.

Both sides use the camera node's code path (numpy_to_image, RELIABLE QoS of the camera node,
image_to_numpy on arrival). Each image carries a frame counter in its first pixel bytes and is
stamped just before conversion and publishing, so latency = arrival - stamp covers conversion,
serialisation, Fast DDS transport and deserialisation.

The measured configuration uses FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (what the stack's processes
set); the baseline, measured in the same run, uses Fast DDS's default transports. Figures:
``delivered``, ``dropped`` (published - delivered), ``latency_ms_p50``, ``latency_ms_p99`` and the
baseline's, plus ``baseline_p50_over_p50`` (how many times faster LARGE_DATA is at the median).

    dexwm-bench camera [--json] [--seconds 5] [--rate 30] [--no-baseline]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dexwm-bench camera", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ap.add_argument("--seconds", type=float, default=5.0, help="publishing time per configuration")
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--no-baseline", action="store_true", help="skip the default-transport baseline")
    ap.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    return ap


def _spin_until(rclpy, node, executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def _publisher(args) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from dexwm_ros.camera_node import IMAGE_QOS
    from dexwm_ros.image_conversion import numpy_to_image

    with rclpy.init():
        node = rclpy.create_node("camera_bench_publisher")
        pub = node.create_publisher(Image, "/camera/camera/color/image_raw", IMAGE_QOS)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if not _spin_until(rclpy, node, executor, lambda: pub.get_subscription_count() > 0, 30.0):
            print(json.dumps({"error": "no subscriber matched within 30 s"}), flush=True)
            return 1
        time.sleep(0.5)  # let the reliable writer finish matching before counting frames
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        n = int(round(args.seconds * args.rate))
        period = 1.0 / args.rate
        start = time.monotonic()
        for k in range(n):
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame.reshape(-1)[:4] = np.frombuffer(np.uint32(k).tobytes(), np.uint8)
            pub.publish(numpy_to_image(frame, time.time(), "camera_color_optical_frame"))
        print(json.dumps({"published": n}), flush=True)
        time.sleep(1.0)  # give the reliable transport time to deliver the tail
        node.destroy_node()
    return 0


def _subscriber(args) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from dexwm_ros.camera_node import IMAGE_QOS
    from dexwm_ros.image_conversion import image_to_numpy
    from dexwm_ros.ros_time import seconds

    seen, latencies = set(), []

    def on_image(msg):
        now = time.time()
        rgb = image_to_numpy(msg)
        k = int(np.frombuffer(rgb.reshape(-1)[:4].tobytes(), np.uint32)[0])
        stamp = seconds(msg.header.stamp)
        if k not in seen:
            seen.add(k)
            latencies.append((now - stamp) * 1000.0)

    with rclpy.init():
        node = rclpy.create_node("camera_bench_subscriber")
        node.create_subscription(Image, "/camera/camera/color/image_raw", on_image, IMAGE_QOS)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        deadline = time.monotonic() + args.seconds + 40.0
        last_count, quiet_since = 0, time.monotonic()
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if len(seen) != last_count:
                last_count, quiet_since = len(seen), time.monotonic()
            elif last_count and time.monotonic() - quiet_since > 2.0:
                break  # the publisher has finished
        node.destroy_node()
    print(json.dumps({"delivered": len(seen), "latencies_ms": latencies}), flush=True)
    return 0


def _run_pair(args, transports: str, domain_id: int) -> dict:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain_id),
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", FASTDDS_BUILTIN_TRANSPORTS=transports)
    base = [sys.executable, "-m", "dexwm_ros.camera_bench", "--seconds", str(args.seconds), "--rate", str(args.rate),
            "--width", str(args.width), "--height", str(args.height)]
    sub = subprocess.Popen(base + ["--role", "subscriber"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        pub = subprocess.run(base + ["--role", "publisher"], env=env, stdout=subprocess.PIPE, text=True,
                             timeout=args.seconds + 60)
        sub_out, _ = sub.communicate(timeout=args.seconds + 60)
    finally:
        if sub.poll() is None:
            sub.kill()
    pub_result = json.loads(pub.stdout.strip().splitlines()[-1])
    if "error" in pub_result:
        raise RuntimeError(f"camera bench publisher ({transports}): {pub_result['error']}")
    sub_result = json.loads(sub_out.strip().splitlines()[-1])
    lat = np.asarray(sub_result["latencies_ms"], dtype=float)
    return {
        "published": pub_result["published"],
        "delivered": sub_result["delivered"],
        "dropped": pub_result["published"] - sub_result["delivered"],
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "publisher":
        return _publisher(args)
    if args.role == "subscriber":
        return _subscriber(args)
    if args.seconds <= 0 or args.rate <= 0 or args.width <= 0 or args.height <= 0:
        print("dexwm-bench camera: error: --seconds, --rate, --width and --height must be positive", file=sys.stderr)
        return 2
    from tqdm import tqdm

    domain_id = 101 + os.getpid() % 100  # away from the test suite's 1..100
    configs = [("LARGE_DATA", "large_data")] + ([] if args.no_baseline else [("DEFAULT", "baseline")])
    results = {}
    for transports, label in tqdm(configs, desc="camera bench", unit="config", file=sys.stderr):
        results[label] = _run_pair(args, transports, domain_id)
    out = {
        "image": f"{args.width}x{args.height} rgb8",
        "rate_hz": args.rate,
        "seconds": args.seconds,
        **{k: results["large_data"][k] for k in ("published", "delivered", "dropped", "latency_ms_p50",
                                                 "latency_ms_p99")},
    }
    if "baseline" in results:
        b = results["baseline"]
        out.update({"baseline_transports": "DEFAULT", "baseline_delivered": b["delivered"],
                    "baseline_dropped": b["dropped"], "baseline_latency_ms_p50": b["latency_ms_p50"],
                    "baseline_latency_ms_p99": b["latency_ms_p99"]})
        if b["latency_ms_p50"] and out["latency_ms_p50"]:
            out["baseline_p50_over_p50"] = round(b["latency_ms_p50"] / out["latency_ms_p50"], 2)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"camera bench: {out['image']} at {args.rate:g} Hz for {args.seconds:g} s, another process")
        print(f"  LARGE_DATA: delivered {out['delivered']}/{out['published']} (dropped {out['dropped']}), "
              f"latency p50 {out['latency_ms_p50']} ms, p99 {out['latency_ms_p99']} ms")
        if "baseline" in results:
            print(f"  DEFAULT   : delivered {out['baseline_delivered']}/{results['baseline']['published']} "
                  f"(dropped {out['baseline_dropped']}), latency p50 {out['baseline_latency_ms_p50']} ms, "
                  f"p99 {out['baseline_latency_ms_p99']} ms")
            if "baseline_p50_over_p50" in out:
                print(f"  ratio baseline p50 / LARGE_DATA p50: {out['baseline_p50_over_p50']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
