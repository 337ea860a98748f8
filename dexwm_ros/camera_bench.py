"""dexwm-bench camera: 640x480 rgb8 images at 30 Hz from one process to a subscriber in another.

Two publishers send the same bytes to the same subscriber, alternating in ``--rounds`` rounds so
that both see the same machine load:

- ``camera``: the camera node's publishing path: the Fast DDS profile it loads
  (config/fastdds_large_images.xml, ``image_transport.use_large_image_profile``), its RELIABLE
  image QoS and ``numpy_to_image``;
- ``bare``: a plain rclpy publisher (``sensor_msgs/Image`` with ``data = frame.tobytes()``, QoS
  depth 10, Fast DDS defaults).

The subscriber runs as the stack's nodes do (``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, the camera
QoS) and converts each image with ``image_to_numpy``. Each image carries a frame counter in its first
pixel bytes and is stamped just before conversion and publishing, so latency = arrival - stamp
covers conversion, serialisation, Fast DDS transport, deserialisation and the subscriber's
executor. JSON keys: ``latency_ms_p50``, ``latency_ms_p99``, ``published``, ``delivered``,
``dropped`` (published - delivered) of the camera path; ``conversion_ms_p50`` and
``publish_call_ms_p50`` (where the publisher's time goes); ``bare_latency_ms_p50``,
``bare_latency_ms_p99``, ``bare_dropped`` and ``bare_over_camera_p50``; ``load_average_1min`` and
``cpus`` (the figures are only comparable under similar load).

    dexwm-bench camera [--json] [--seconds 5] [--rate 30] [--rounds 2] [--no-bare] [--bare-env NAME=VALUE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TOPIC = "/camera/camera/color/image_raw"
PATHS = ("camera", "bare")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dexwm-bench camera", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ap.add_argument("--seconds", type=float, default=5.0, help="publishing time per path and round")
    ap.add_argument("--rate", type=float, default=30.0, help="frames per second")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two paths")
    ap.add_argument("--no-bare", action="store_true", help="measure the camera path only")
    ap.add_argument("--bare-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of the bare publisher, e.g. FASTDDS_BUILTIN_TRANSPORTS=SHM (repeatable): "
                         "how the README's transport table was measured")
    ap.add_argument("--role", choices=["publisher", "subscriber"], help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=PATHS, default="camera", help=argparse.SUPPRESS)
    return ap


def _spin_until(executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def _publisher(args) -> int:
    profile = "Fast DDS defaults"
    if args.path == "camera":
        from dexwm_ros.image_transport import use_large_image_profile

        profile = use_large_image_profile()   # as the camera node's main() does, before rclpy.init
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from dexwm_ros.camera_node import IMAGE_QOS
    from dexwm_ros.image_conversion import numpy_to_image, to_time_msg

    def bare_image(frame, stamp):
        msg = Image()
        msg.header.stamp = to_time_msg(stamp)
        msg.header.frame_id = "camera_color_optical_frame"
        msg.height, msg.width = frame.shape[:2]
        msg.encoding, msg.step = "rgb8", frame.shape[1] * 3
        msg.data = frame.tobytes()
        return msg

    with rclpy.init():
        node = rclpy.create_node(f"camera_bench_{args.path}")
        pub = node.create_publisher(Image, TOPIC, IMAGE_QOS if args.path == "camera" else 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if not _spin_until(executor, lambda: pub.get_subscription_count() > 0, 30.0):
            print(json.dumps({"error": "no subscriber matched within 30 s"}), flush=True)
            return 1
        time.sleep(0.5)  # let the reliable writer finish matching before counting frames
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        n = int(round(args.seconds * args.rate))
        period = 1.0 / args.rate
        convert_ms, publish_ms = [], []
        start = time.monotonic()
        for k in range(n):
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame.reshape(-1)[:4] = np.frombuffer(np.uint32(k).tobytes(), np.uint8)
            t0 = time.perf_counter()
            stamp = time.time()
            msg = numpy_to_image(frame, stamp, "camera_color_optical_frame") if args.path == "camera" \
                else bare_image(frame, stamp)
            t1 = time.perf_counter()
            pub.publish(msg)
            t2 = time.perf_counter()
            convert_ms.append((t1 - t0) * 1e3)
            publish_ms.append((t2 - t1) * 1e3)
        print(json.dumps({"published": n, "fastdds_profile": profile, "conversion_ms_p50": float(np.median(convert_ms)),
                          "publish_call_ms_p50": float(np.median(publish_ms))}), flush=True)
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
        node.create_subscription(Image, TOPIC, on_image, IMAGE_QOS)
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


def _run_pair(args, path: str, domain_id: int) -> dict:
    # The subscriber runs as the stack's nodes run; the bare publisher gets Fast DDS's defaults.
    sub_env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain_id),
                   RMW_IMPLEMENTATION="rmw_fastrtps_cpp", FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
    pub_env = dict(sub_env)
    if path == "bare":
        for name in ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
            pub_env.pop(name, None)
        pub_env.update(item.split("=", 1) for item in args.bare_env)
    base = [sys.executable, "-m", "dexwm_ros.camera_bench", "--seconds", str(args.seconds), "--rate", str(args.rate),
            "--width", str(args.width), "--height", str(args.height)]
    sub = subprocess.Popen(base + ["--role", "subscriber"], env=sub_env, stdout=subprocess.PIPE, text=True)
    try:
        pub = subprocess.run(base + ["--role", "publisher", "--path", path], env=pub_env, stdout=subprocess.PIPE,
                             text=True, timeout=args.seconds + 60)
        sub_out, _ = sub.communicate(timeout=args.seconds + 60)
    finally:
        if sub.poll() is None:
            sub.kill()
    pub_result = json.loads(pub.stdout.strip().splitlines()[-1])
    if "error" in pub_result:
        raise RuntimeError(f"camera bench publisher ({path}): {pub_result['error']}")
    sub_result = json.loads(sub_out.strip().splitlines()[-1])
    return {**pub_result, "delivered": sub_result["delivered"], "latencies_ms": sub_result["latencies_ms"]}


def _summary(runs: list[dict]) -> dict:
    lat = np.concatenate([np.asarray(r["latencies_ms"], dtype=float) for r in runs])
    published = sum(r["published"] for r in runs)
    delivered = sum(r["delivered"] for r in runs)
    pct = lambda q: round(float(np.percentile(lat, q)), 3) if lat.size else None  # noqa: E731
    return {"published": published, "delivered": delivered, "dropped": published - delivered,
            "latency_ms_p50": pct(50), "latency_ms_p99": pct(99),
            "conversion_ms_p50": round(float(np.median([r["conversion_ms_p50"] for r in runs])), 3),
            "publish_call_ms_p50": round(float(np.median([r["publish_call_ms_p50"] for r in runs])), 3)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.role == "publisher":
        return _publisher(args)
    if args.role == "subscriber":
        return _subscriber(args)
    if any("=" not in item for item in args.bare_env):
        print("dexwm-bench camera: error: --bare-env takes NAME=VALUE", file=sys.stderr)
        return 2
    if args.seconds <= 0 or args.rate <= 0 or args.width <= 0 or args.height <= 0 or args.rounds <= 0:
        print("dexwm-bench camera: error: --seconds, --rate, --width, --height and --rounds must be positive",
              file=sys.stderr)
        return 2
    from tqdm import tqdm

    domain_id = 101 + os.getpid() % 100  # away from the test suite's 1..100
    paths = ("camera",) if args.no_bare else PATHS
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    steps = [(r, p) for r in range(args.rounds) for p in paths]
    for _, path in tqdm(steps, desc="camera bench", unit="run", file=sys.stderr):
        runs[path].append(_run_pair(args, path, domain_id))
    camera = _summary(runs["camera"])
    out = {"image": f"{args.width}x{args.height} rgb8", "rate_hz": args.rate, "seconds": args.seconds,
           "rounds": args.rounds, **camera, "fastdds_profile": runs["camera"][0]["fastdds_profile"],
           "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    if "bare" in runs:
        bare = _summary(runs["bare"])
        out.update({f"bare_{k}": v for k, v in bare.items()}, bare_env=args.bare_env)
        if bare["latency_ms_p50"] and camera["latency_ms_p50"]:
            out["bare_over_camera_p50"] = round(bare["latency_ms_p50"] / camera["latency_ms_p50"], 2)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"camera bench: {out['image']} at {args.rate:g} Hz, {args.rounds} x {args.seconds:g} s per path, "
              f"to another process (load average {out['load_average_1min']} on {out['cpus']} CPUs)")
        for label, prefix in (("camera path", ""), ("bare rclpy ", "bare_")):
            if f"{prefix}latency_ms_p50" in out:
                print(f"  {label}: delivered {out[prefix + 'delivered']}/{out[prefix + 'published']} "
                      f"(dropped {out[prefix + 'dropped']}), latency p50 {out[prefix + 'latency_ms_p50']} ms, "
                      f"p99 {out[prefix + 'latency_ms_p99']} ms; conversion {out[prefix + 'conversion_ms_p50']} ms, "
                      f"publish() {out[prefix + 'publish_call_ms_p50']} ms")
        if "bare_over_camera_p50" in out:
            print(f"  bare p50 / camera p50: {out['bare_over_camera_p50']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
