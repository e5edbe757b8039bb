"""In-process replay API: order, pacing on an injected clock, rate, loop, offset, topic filter. No ROS here."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge.drives.replay as replay_mod
from edge.drives import topics as T
from edge.drives.bag import open_bag
from edge.drives.replay import ManualClock, Player, ReplayConfig, replay
from edge.errors import BagError

S = 1_700_000_000_000_000_000


def test_replay_module_does_not_import_rclpy():
    src = Path(replay_mod.__file__).read_text()
    assert "rclpy" not in src.replace("no rclpy", "")


def test_real_time_pacing_on_injected_clock(drive_bag: Path):
    clock = ManualClock(100.0)
    msgs = []
    for m in replay(drive_bag, rate=1.0, topics=[T.ODOM, T.AUDIO], clock=clock):
        # each message is released exactly when its bag time is due, never early
        assert clock.now() == pytest.approx(100.0 + (m.stamp_ns - S) / 1e9, abs=1e-9)
        msgs.append(m)
    assert len(msgs) == 150 and [m.stamp_ns for m in msgs] == sorted(m.stamp_ns for m in msgs)
    assert clock.now() == pytest.approx(100.0 + 1.98)


def test_rate_offset_and_as_fast_as_possible(drive_bag: Path):
    clock = ManualClock()
    msgs = list(replay(drive_bag, rate=4.0, start_offset_s=1.0, topics=[T.ODOM], clock=clock))
    assert msgs[0].stamp_ns == S + 10**9 and len(msgs) == 50
    assert clock.now() == pytest.approx(0.98 / 4.0)
    fast = ManualClock()
    assert len(list(replay(drive_bag, rate=None, clock=fast))) == sum(t.count for t in open_bag(drive_bag).topics.values())
    assert fast.sleeps == []


def test_loop_restarts_and_tags_passes(drive_bag: Path):
    clock = ManualClock()
    player = Player(drive_bag, ReplayConfig(rate=2.0, loop=True, topics=[T.GT_QA]), clock)
    got = []
    for m in player:
        got.append((m.loop, m.stamp_ns))
        if len(got) == 10:
            break
    assert [g[0] for g in got] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [g[1] for g in got[:5]] == [S, S + 5 * 10**8, S + 10**9, S + 15 * 10**8, S]
    assert player.sim_time_ns() == S + 5 * 10**8  # second message of the third pass


def test_raw_replay_yields_cdr_and_bad_arguments_are_clear(drive_bag: Path):
    m = next(iter(replay(drive_bag, rate=None, raw=True, topics=[T.AUDIO])))
    assert isinstance(m.msg, bytes) and m.msgtype == T.IMAGE
    with pytest.raises(BagError, match="/nope"):
        Player(drive_bag, ReplayConfig(topics=["/nope"]))
    with pytest.raises(BagError, match="rate"):
        Player(drive_bag, ReplayConfig(rate=0))


class _Publisher:
    """A stand-in rclpy publisher: `subscribers` matched from fake time `matched_at` on (None: never)."""

    def __init__(self, now: list[float], matched_at: float | None, subscribers: int = 1) -> None:
        self.now, self.matched_at, self.subscribers = now, matched_at, subscribers

    def get_subscription_count(self) -> int:
        return self.subscribers if self.matched_at is not None and self.now[0] >= self.matched_at else 0


def _fake_time() -> tuple[list[float], dict]:
    now = [0.0]
    return now, dict(clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


def test_wait_for_subscribers_names_an_unmatched_topic_early(capsys):
    """A topic nobody subscribes to (the node remapped odom to /vehicle/odom, the replay still publishes /odom) held
    playback silently for the whole --wait-for-subscribers timeout (120 s in the DDS test). The topics still short
    are now named once, with the remedy, after `notice_after_s` of fake time, before the timeout's warning."""
    from ros_nodes.replay import _wait_for_subscribers

    now, fake = _fake_time()
    pubs = {"/odom": _Publisher(now, None), "/fisheye/front/image_raw/compressed": _Publisher(now, 1.0)}
    _wait_for_subscribers(pubs, 120.0, notice_after_s=5.0, **fake)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    notice, warning = err
    assert notice.startswith("edge replay: waiting up to 120 s") and "on 1 of 2 topic(s): /odom (0);" in notice
    assert "--ros-args -r FROM:=TO" in notice and "fisheye" not in notice
    assert warning.startswith("edge replay: warning: fewer than 1 subscriber(s) after 120 s") and "/odom (0)" in warning
    assert 120.0 <= now[0] < 121.0


def test_wait_for_subscribers_ends_on_the_match_quietly(capsys):
    from ros_nodes.replay import _wait_for_subscribers

    now, fake = _fake_time()
    pubs = {"/odom": _Publisher(now, 7.0, 2), "/audio/raw": _Publisher(now, 1.0, 2)}
    _wait_for_subscribers(pubs, 120.0, count=2, notice_after_s=5.0, **fake)
    err = capsys.readouterr().err
    assert now[0] < 7.5  # playback starts on the last match (+0.2 s), not at the timeout
    assert "waiting up to 120 s for 2 subscriber(s) on 1 of 2 topic(s): /odom (0)" in err and "warning" not in err
    now2, fake2 = _fake_time()
    _wait_for_subscribers({"/odom": _Publisher(now2, 1.0)}, 120.0, notice_after_s=5.0, **fake2)
    assert capsys.readouterr().err == "" and now2[0] < 1.5  # matched before the notice: nothing printed
