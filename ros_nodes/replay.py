"""`edge replay BAG`: publish a bag on ROS 2 topics with /clock, like `ros2 bag play`.

The CDR bytes stored in the bag are published as they are (rclpy's Publisher.publish accepts serialized bytes),
so nothing is decoded or re-encoded on the way; pacing, looping, offset and topic filter come from
`edge.drives.replay.Player`. QoS per DESIGN.md (ros_nodes.qos); /clock carries the bag time at `--clock-hz`.
`--raw-images` publishes each recorded `<base>/compressed` camera stream decoded, as sensor_msgs/Image (bgr8) on
`<base>`, as a camera driver without image_transport's compressed plugin would (same header stamps).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

from edge.drives import topics as T
from edge.drives.replay import Player, RealClock, ReplayConfig
from edge.errors import BagError


def message_class(msgtype: str) -> Any:
    """The rclpy message class of 'pkg/msg/Name', or None if its Python package is not installed."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


class _ClockPublishingClock(RealClock):
    """Sleeps in slices and publishes /clock (bag time) at a fixed rate meanwhile, as ros2 bag play --clock does."""

    def __init__(self, publish_clock: Any, period_s: float) -> None:
        self.publish_clock, self.period = publish_clock, period_s

    def sleep(self, seconds: float) -> None:
        end = self.now() + seconds
        while True:
            left = end - self.now()
            if left <= 0:
                return  # the message now due carries the clock forward: /clock never runs ahead of the data
            self.publish_clock()
            time.sleep(min(left, self.period))


def _decompressed(data: bytes) -> bytes:
    """CDR of a CompressedImage -> CDR of the same frame as a raw bgr8 Image (same header)."""
    from edge.drives import messages as M

    msg = M.deserialize(data, T.COMPRESSED_IMAGE)
    img = M.decode_image(msg, T.COMPRESSED_IMAGE)
    return M.serialize(M.raw_image(M.header_stamp_ns(msg), msg.header.frame_id, img), T.IMAGE)


def _is_camera(topic: str, msgtype: str) -> bool:
    return msgtype == T.COMPRESSED_IMAGE and topic.endswith("/image_raw" + T.COMPRESSED_SUFFIX)


def run_replay(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock as ClockMsg

    from ros_nodes.qos import clock_qos, qos_for_topic

    cfg = ReplayConfig(rate=args.rate if args.rate > 0 else None, loop=args.loop,
                       start_offset_s=args.start_offset, topics=args.topics or None, raw=True)
    rclpy.init(args=["edge replay", "--ros-args", *args.ros_args] if args.ros_args else None)
    node: Node = Node("edge_replay")
    try:
        clock_pub = node.create_publisher(ClockMsg, T.CLOCK_TOPIC, clock_qos())
        last_clock = [-1]
        player: Player

        def publish_clock(force_ns: int | None = None) -> None:
            ns = force_ns if force_ns is not None else player.sim_time_ns()
            if ns is None or ns <= last_clock[0]:
                return
            last_clock[0] = ns
            msg = ClockMsg()
            msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
            clock_pub.publish(msg)

        period = 1.0 / args.clock_hz
        player = Player(args.bag, cfg, clock=_ClockPublishingClock(publish_clock, period))
        for d in player.bag.diagnostics:
            print(f"edge replay: warning: {d}", file=sys.stderr)
        pubs: dict[str, Any] = {}
        raw_images = set()
        for recorded, msgtype in player.topic_types().items():
            topic = recorded
            if args.raw_images and _is_camera(recorded, msgtype):
                raw_images.add(recorded)
                topic, msgtype = recorded.removesuffix(T.COMPRESSED_SUFFIX), T.IMAGE
            cls = message_class(msgtype)
            if cls is None:
                print(f"edge replay: warning: topic '{topic}': no Python message package for {msgtype}; "
                      "not published", file=sys.stderr)
                continue
            pubs[recorded] = node.create_publisher(cls, topic, qos_for_topic(topic))
        if args.delay > 0:
            time.sleep(args.delay)  # let subscribers discover the publishers, like ros2 bag play --delay
        if args.wait_for_subscribers > 0:
            _wait_for_subscribers(pubs, args.wait_for_subscribers, args.subscribers)
        print(f"edge replay: {args.bag}: {len(pubs)} topics, rate {args.rate}x"
              f"{', loop' if args.loop else ''}", file=sys.stderr)
        sent = 0
        next_clock_wall = 0.0
        last_stamp = None
        for m in player:
            last_stamp = m.stamp_ns
            pub = pubs.get(m.topic)
            if pub is None:
                continue
            now = time.monotonic()
            if cfg.rate is None or now >= next_clock_wall:
                publish_clock(m.stamp_ns)  # /clock never behind the data it accompanies
                next_clock_wall = now + period
            pub.publish(_decompressed(m.msg) if m.topic in raw_images else m.msg)
            sent += 1
        if last_stamp is not None:
            publish_clock(last_stamp)  # /clock ends at the last message, not beyond the recording
        time.sleep(args.linger)  # let best-effort data leave the process before the node is destroyed
        print(f"edge replay: published {sent} messages", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _wait_for_subscribers(pubs: dict[str, Any], timeout_s: float, count: int = 1, notice_after_s: float = 5.0,
                          clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
    """Hold playback until every topic has `count` matched subscribers (best-effort data sent before a match is
    lost to that subscriber: two graphs fed by one replay would start from different data).

    A topic nobody subscribes to holds playback for the whole timeout: a node whose input is remapped
    (`edge node --ros-args -r odom:=/vehicle/odom`) listens under another name than the replay publishes, and
    nothing flows meanwhile. So after `notice_after_s` the topics still short are named once, with the remedy (the
    same remap on the replay), instead of only at the timeout."""
    start = clock()
    deadline, noticed = start + timeout_s, False

    def short() -> list[str]:
        return sorted(t for t, p in pubs.items() if p.get_subscription_count() < count)

    def named(topics: list[str]) -> str:
        shown = ", ".join(f"{t} ({pubs[t].get_subscription_count()})" for t in topics[:5])
        return shown + (f" and {len(topics) - 5} more" if len(topics) > 5 else "")

    while clock() < deadline and (missing := short()):
        if not noticed and clock() - start >= notice_after_s:
            noticed = True
            print(f"edge replay: waiting up to {timeout_s:g} s for {count} subscriber(s) on {len(missing)} of "
                  f"{len(pubs)} topic(s): {named(missing)}; a node subscribed under another name needs the same "
                  "remap here (edge replay ... --ros-args -r FROM:=TO), or leave the topic out (--topics)",
                  file=sys.stderr, flush=True)
        sleep(0.05)
    missing = short()
    if missing:
        print(f"edge replay: warning: fewer than {count} subscriber(s) after {timeout_s:g} s on {len(missing)} "
              f"topic(s): {named(missing)}; playing anyway", file=sys.stderr, flush=True)
    else:
        sleep(0.2)  # the subscribers' side of the match completes a moment after ours


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="publish a bag on ROS 2 topics with /clock (like ros2 bag play)",
                       description=__doc__.splitlines()[0])
    p.add_argument("bag", help="rosbag2 bag directory (MCAP or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate, x real time; 0 = as fast as possible [1.0]")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S", help="start S seconds into the bag [0]")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="only these topics [all]")
    p.add_argument("--clock-hz", type=float, default=40.0, help="/clock publication rate [40]")
    p.add_argument("--delay", type=float, default=0.0, metavar="S", help="wait S seconds before playing [0]")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until every topic has a subscriber [0: don't wait]")
    p.add_argument("--subscribers", type=int, default=1, metavar="N",
                   help="with --wait-for-subscribers: wait until every topic has N subscribers (N nodes fed at once) [1]")
    p.add_argument("--linger", type=float, default=0.5, metavar="S", help="keep the node S seconds after the end")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], dest="ros_args", metavar="ARG",
                   help="ROS 2 arguments, last on the line (e.g. -r /odom:=/vehicle/odom)")
    p.add_argument("--raw-images", action="store_true",
                   help="publish compressed camera streams decoded, as sensor_msgs/Image on <base> (not <base>/compressed)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.clock_hz <= 0:
        raise BagError(f"--clock-hz must be > 0, not {args.clock_hz}")
    if args.subscribers < 1:
        raise BagError(f"--subscribers must be >= 1, not {args.subscribers}")
    return run_replay(args)
