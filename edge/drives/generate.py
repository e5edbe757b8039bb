"""`edge drive generate`: a synthetic drive with exact ground truth, written as a rosbag2 bag.

Streams and rates follow a real car: fisheye and front cameras at their rig rates (10 Hz default) with small
trigger offsets, ultrasonic sensors fired in sequence at 20 Hz, audio in 40 ms chunks, odometry at 50 Hz. Ground
truth rides in the same bag under /ground_truth/. The same (scenario, seed, duration, rig) gives the same bag.

Modality plugins add their sensors through their simulator (edge.drives.sim_hooks): after the built-ins' streams,
each frame window takes the messages of every plugin that declares a simulator and has sensors on the rig. The
built-ins' random streams are their own (shared between the cameras) and plugins draw from theirs, so a drive's
built-in messages are the same bytes with plugins installed or not. Generation is offline, so a simulator that
fails to import, raises, or writes outside its own topics and frame window stops it with a PluginError naming the
plugin and offering `--without <name>` (the drive without that plugin's sensors); one that fails to import or to be
built does so before the bag is created.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from edge.drives import messages as M
from edge.drives import topics as T
from edge.drives.audio_sim import AudioSimulator
from edge.drives.bag import BagWriter
from edge.drives.groundtruth import GT_GRID, BevRasterizer, actor_states, audio_sources, object_list
from edge.drives.qa import make_qa
from edge.drives.render import CameraRenderer, GroundTexture, Lighting, SceneFaces
from edge.drives.scenarios import Scenario, daylight_at, get_scenario, lighting_label
from edge.drives.sim_hooks import SensorSimulator, SimMessage, SimSetup, to_ns
from edge.drives.ultrasonic_sim import Footprints, UltrasonicSimulator
from edge.drives.world import Part, World, build_world
from edge.errors import EdgeError, PluginError
from edge.modalities.interface import ModalityPlugin, import_ref
from edge.modalities.registry import registry
from edge.sensors.camera_models import CameraBase
from edge.sensors.rig import Rig, load_rig

FRAME_PERIOD = 0.1
GT_PREFIX = "/ground_truth/"  # a plugin's own ground truth goes under GT_PREFIX<name>/
ODOM_RATE = 50.0
QA_RATE = 2.0  # instants per second carrying conditions and every QA template (docs/drives.md)
JPEG_QUALITY = 85
HIGH_SUN = (math.radians(35.0), math.radians(50.0))


@dataclass(frozen=True)
class DriveSummary:
    path: Path
    scenario: str
    seed: int
    duration: float
    messages: int
    size_bytes: int
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        return self.duration / self.wall_seconds if self.wall_seconds > 0 else math.inf


def ego_parts(rig: Rig) -> list[Part]:
    """The ego body as boxes, so that cameras see their own car as real ones do."""
    x0, x1, y0, y1 = rig.footprint()
    v = rig.vehicle
    return [Part((x0 + x1) / 2, 0.0, 0.25, x1 - x0, y1 - y0, 0.75, (70, 70, 72)),
            Part((x0 + x1) / 2 - 0.3, 0.0, 1.0, 0.5 * (x1 - x0), 0.85 * (y1 - y0), v.height - 1.0, (50, 45, 40))]


def sun_vector(scenario: Scenario, ego_yaw: float) -> np.ndarray:
    az, el = scenario.glare_sun or HIGH_SUN
    rel = az - ego_yaw
    return np.array([math.cos(el) * math.cos(rel), math.cos(el) * math.sin(rel), math.sin(el)])


WITHOUT_HINT = "the drive can be generated without its sensors: edge drive generate ... --without {name}"


def _plugin_error(plugin: ModalityPlugin, problem: str) -> PluginError:
    """The generator's error for a plugin's simulator, with the way round it."""
    return PluginError(f"'{plugin.name}' (simulator {plugin.simulator})",
                       f"{problem}; {WITHOUT_HINT.format(name=plugin.name)}")


def simulated_sensors(plugin: ModalityPlugin, rig: Rig) -> tuple[str, ...]:
    """The sensors its simulator simulates on this rig: `sensors(rig)`; none without a simulator."""
    if plugin.simulator is None:
        return ()
    try:
        return tuple(plugin.sensors(rig))
    except Exception as exc:
        raise _plugin_error(plugin, f"sensors(rig) raised {type(exc).__name__}: {exc}") from exc


class PluginSimulation:
    """One plugin's simulator over a drive, with what it may write: its own topics on this rig (with their types)
    and ground truth of its own under /ground_truth/<name>/; anything else would write over another stream."""

    def __init__(self, plugin: ModalityPlugin, setup: SimSetup) -> None:
        self.plugin = plugin
        try:
            self.topics = {t.name: t for t in plugin.topics(setup.sensors)}
        except Exception as exc:
            raise _plugin_error(plugin, f"topics{setup.sensors} raised {type(exc).__name__}: {exc}") from exc
        self.truth_prefix = f"{GT_PREFIX}{plugin.name}/"
        try:
            factory = import_ref(plugin.simulator or "", plugin.name)
        except PluginError as exc:
            raise _plugin_error(plugin, exc.problem) from None
        try:
            self.sim: SensorSimulator = factory(setup)  # type: ignore[operator]
        except Exception as exc:
            raise _plugin_error(plugin, f"raised {type(exc).__name__}: {exc} when built") from exc

    def messages(self, t0: float, t1: float) -> list[SimMessage]:
        """Its messages stamped in [t0, t1), checked."""
        try:
            msgs = list(self.sim.messages(t0, t1))
        except Exception as exc:
            raise _plugin_error(self.plugin, f"raised {type(exc).__name__}: {exc} at t = {t0:.3f} s") from exc
        for msg in msgs:
            self._check(msg, to_ns(t0), to_ns(t1))
        return msgs

    def _check(self, msg: SimMessage, lo: int, hi: int) -> None:
        try:
            stamp, topic, msgtype, _ = msg
        except (TypeError, ValueError):
            raise _plugin_error(self.plugin, f"gave {type(msg).__name__} {msg!r:.80}, not a (stamp_ns, "
                                             "topic, msgtype, message) tuple") from None
        spec = self.topics.get(topic)
        if spec is None and not topic.startswith(self.truth_prefix):
            raise _plugin_error(self.plugin, f"wrote '{topic}', neither one of its topics on this rig "
                                             f"({', '.join(self.topics) or 'none'}) nor under {self.truth_prefix}")
        if spec is not None and msgtype not in spec.types:
            raise _plugin_error(self.plugin, f"wrote {msgtype} on '{topic}', which carries "
                                             f"{' or '.join(spec.types)}")
        # [lo, hi], not [lo, hi): a sweep at the window's end by float rounding (0.2 + 0.1 > 0.3) keeps the bag in
        # order all the same, as the next window's messages are stamped from hi on
        if not isinstance(stamp, (int, np.integer)) or not lo <= stamp <= hi:
            raise _plugin_error(self.plugin, f"stamped '{topic}' {stamp!r} ns, outside the frame window "
                                             f"[{lo}, {hi}] it was asked for")

    def close(self) -> None:
        try:
            self.sim.close()
        except Exception as exc:
            raise _plugin_error(self.plugin, f"raised {type(exc).__name__}: {exc} when closed") from exc


def plugin_simulations(world: World, rig: Rig, seed: int,
                       plugins: Iterable[ModalityPlugin]) -> list[PluginSimulation]:
    """A simulation for each plugin that declares a simulator and has sensors on this rig, in registry order."""
    sims = []
    for plugin in plugins:
        try:
            sensors = simulated_sensors(plugin, rig)
            if sensors:
                sims.append(PluginSimulation(plugin, SimSetup(world, rig, seed, sensors)))
        except PluginError:
            close_all(sims)  # those built before it
            raise
    return sims


def close_all(sims: list[PluginSimulation]) -> None:
    """Close every one, then raise the first failure: one plugin's broken close() must not leak the others'."""
    failures = []
    for sim in sims:
        try:
            sim.close()
        except PluginError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


class DriveGenerator:
    """Simulates every stream of the rig over a world and hands stamped messages to a sink.

    `plugins`: the modality plugins whose simulators add their sensors (None: the registry's)."""

    def __init__(self, world: World, rig: Rig, seed: int, plugins: Iterable[ModalityPlugin] | None = None) -> None:
        self.world, self.rig = world, rig
        self.rng = np.random.default_rng((seed, 1))
        self.cameras: list[tuple[CameraBase, str, str]] = [
            (cam, T.fisheye_image_topic(name) + T.COMPRESSED_SUFFIX, T.fisheye_info_topic(name))
            for name, cam in rig.fisheye.items()
        ]
        if "front" in rig.cameras:
            self.cameras.append((rig.cameras["front"], T.FRONT_CAMERA_IMAGE + T.COMPRESSED_SUFFIX, T.FRONT_CAMERA_INFO))
        parts = ego_parts(rig)
        self.renderers = [CameraRenderer(cam, parts) for cam, _, _ in self.cameras]
        self.ground = GroundTexture(world)
        self.scene = SceneFaces(world.actors)
        self.ultrasonic = UltrasonicSimulator(rig.ultrasonic, np.random.default_rng((seed, 2)))
        self.audio = AudioSimulator(world, rig.microphones, seed)
        self.grid = GT_GRID
        self.bev = BevRasterizer(self.grid, rig.footprint(), [c.position[:2] for c in rig.fisheye.values()])
        self.footprint = rig.footprint()
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.plugin_sims = plugin_simulations(world, rig, seed, registry() if plugins is None else plugins)

    def light_at(self, t: float) -> tuple[Lighting, float]:
        daylight = daylight_at(self.world.scenario, t / self.world.duration)
        _, _, yaw = self.world.ego.pose(t)
        return Lighting(daylight, sun_vector(self.world.scenario, yaw), self.world.scenario.glare_sun is not None), yaw

    def glare_cameras(self, light: Lighting) -> list[str]:
        if not light.glare:
            return []
        names = []
        for (cam, _, _) in self.cameras:
            _, ok = cam.project(cam.T_cam_base[:3, :3] @ light.sun_base[None, :].T.ravel())
            if ok[0]:
                names.append(f"{'fisheye' if cam.distortion_model == 'equidistant' else 'camera'}/{cam.name}")
        return names

    def _camera_frame(self, i: int, t: float, rng: np.random.Generator) -> tuple[int, Any, Any]:
        cam, _, _ = self.cameras[i]
        light, _ = self.light_at(t)
        pose = self.world.ego.pose(t)
        faces = self.scene.at(t, pose)
        img = self.renderers[i].render(self.ground.tile_for(pose[0]), pose, faces, light, rng)
        stamp = to_ns(t)
        image_msg = M.compressed_image(stamp, cam.frame_id, img, quality=JPEG_QUALITY)
        info_msg = M.camera_info(stamp, cam.frame_id, cam.width, cam.height, cam.K, cam.D, cam.distortion_model)
        return stamp, image_msg, info_msg

    def frame(self, k: int, emit: Callable[[str, str, int, Any], None]) -> None:
        """Everything stamped in [k, k+1) * FRAME_PERIOD."""
        t0 = k * FRAME_PERIOD
        out: list[tuple[int, str, str, Any]] = []
        # Cameras: triggered one after the other, 4 ms apart, each rendered at its own instant.
        seeds = self.rng.integers(0, 2**63, len(self.cameras))
        ts = [t0 + 0.004 * i + abs(self.rng.normal(0, 0.0004)) for i in range(len(self.cameras))]
        frames = list(self.pool.map(lambda i: self._camera_frame(i, ts[i], np.random.default_rng(seeds[i])),
                                    range(len(self.cameras))))
        for (cam, img_topic, info_topic), (stamp, img, info) in zip(self.cameras, frames):
            out.append((stamp, img_topic, T.COMPRESSED_IMAGE, img))
            out.append((stamp, info_topic, T.CAMERA_INFO, info))
        # Ultrasonic: sensors fire in sequence (3 ms apart) each cycle.
        us_period = 1.0 / self.rig.ultrasonic[0].rate_hz
        for c in range(int(math.ceil(t0 / us_period - 1e-9)), int(math.ceil((t0 + FRAME_PERIOD) / us_period - 1e-9))):
            tc = c * us_period
            fp = Footprints.of(self.world.actors, tc, self.world.ego.pose(tc), 12.0)
            for j, (sensor, r) in enumerate(zip(self.rig.ultrasonic, self.ultrasonic.read(fp))):
                if r is None:
                    continue
                st = to_ns(tc + 0.003 * j)
                out.append((st, T.ultrasonic_topic(sensor.name), T.RANGE,
                            M.range_msg(st, sensor.frame_id, r, sensor.beam_width, sensor.min_range, sensor.max_range)))
        # Audio chunks whose first sample falls in the window.
        mics = self.rig.microphones
        chunk = mics.chunk_seconds
        for c in range(int(math.ceil(t0 / chunk - 1e-9)), int(math.ceil((t0 + FRAME_PERIOD) / chunk - 1e-9))):
            tc = c * chunk
            if tc + chunk > self.world.duration + 1e-9:
                continue
            st = to_ns(tc)
            out.append((st, T.AUDIO, T.IMAGE, M.audio_chunk(st, mics.frame_id, self.audio.render(tc, mics.chunk_samples))))
        # Odometry.
        for c in range(int(round(t0 * ODOM_RATE)), int(round((t0 + FRAME_PERIOD) * ODOM_RATE))):
            tc = c / ODOM_RATE
            x, y, yaw = self.world.ego.pose(tc)
            v, yaw_rate = self.world.ego.twist(tc)
            st = to_ns(tc)
            out.append((st, T.ODOM, T.ODOMETRY, M.odometry(st, "odom", "base_link", x, y, yaw, v, 0.0, yaw_rate)))
        self._ground_truth(k, t0, out)
        t1 = (k + 1) * FRAME_PERIOD  # the next window's t0 exactly (t0 + FRAME_PERIOD may differ in the last bit)
        for sim in self.plugin_sims:  # after the built-ins: a stable sort keeps their order among themselves
            out.extend(sim.messages(t0, t1))
        for stamp, topic, msgtype, msg in sorted(out, key=lambda m: m[0]):
            emit(topic, msgtype, stamp, msg)

    def _ground_truth(self, k: int, t: float, out: list[tuple[int, str, str, Any]]) -> None:
        pose = self.world.ego.pose(t)
        states = actor_states(self.world.actors, t, pose, 30.0)
        st = to_ns(t)
        grid = self.bev.rasterize(states)
        out.append((st, T.GT_BEV, T.OCCUPANCY_GRID,
                    M.occupancy_grid(st, "base_link", grid, self.grid.resolution, (self.grid.x_min, self.grid.y_min))))
        out.append((st, T.GT_OBJECTS, T.MARKER_ARRAY, M.marker_array_boxes(st, "base_link", object_list(states, self.grid))))
        audio = audio_sources(self.world, t, pose)
        out.append((st, T.GT_AUDIO_EVENTS, T.MARKER_ARRAY, M.marker_array_events(st, "base_link", audio)))
        if k % int(round(1.0 / (QA_RATE * FRAME_PERIOD))) == 0:
            light, _ = self.light_at(t)
            v, _ = self.world.ego.twist(t)
            conditions = {"scenario": self.world.scenario.name, "seed": self.world.seed, "daylight": round(light.daylight, 3),
                          "lighting": lighting_label(light.daylight), "glare_cameras": self.glare_cameras(light),
                          "speed": round(v, 3), "reversing": v < -0.1, "audio_events": [a["class"] for a in audio]}
            out.append((st, T.GT_CONDITIONS, T.STRING, M.string_json(conditions, st)))
            pairs = make_qa(states, self.footprint, [(a["class"], a["x"], a["y"]) for a in audio])
            for n, pair in enumerate(pairs):
                out.append((st + n, T.GT_QA, T.STRING, M.string_json(pair.as_dict(), st)))

    def close(self) -> None:
        self.pool.shutdown()
        sims, self.plugin_sims = self.plugin_sims, []
        close_all(sims)


def generate_drive(out: str | Path, seed: int, duration: float, scenario: str, rig_path: str | Path | None = None,
                   progress: bool = True, plugins: Iterable[ModalityPlugin] | None = None,
                   without: Iterable[str] = ()) -> DriveSummary:
    """Generate a drive into the bag directory `out` (which must not exist or be empty). `plugins`: those whose
    simulators add their sensors (None: the registry's), less those named in `without`."""
    import time

    if duration <= 0 or not math.isfinite(duration):
        raise EdgeError(f"--duration must be a positive number of seconds, got {duration}")
    if duration > 3600:
        raise EdgeError(f"--duration {duration} s is over the one-hour limit of a generated drive")
    sc = get_scenario(scenario)
    rig = load_rig(rig_path)
    simulated = simulated_plugins(registry() if plugins is None else plugins, rig, without)
    started = time.perf_counter()
    world = build_world(sc, seed, duration, rig.footprint())
    gen = DriveGenerator(world, rig, seed, simulated)
    n_frames = int(round(duration / FRAME_PERIOD))
    custom = {"mpnp_edge.scenario": sc.name, "mpnp_edge.seed": str(seed), "mpnp_edge.duration": str(duration),
              "mpnp_edge.rig": rig.fingerprint()}
    if gen.plugin_sims:  # only then: a drive without plugin sensors keeps the metadata it always had
        custom["mpnp_edge.simulators"] = ",".join(s.plugin.name for s in gen.plugin_sims)
    bar = _progress(n_frames, f"generate {sc.name} seed {seed}", progress)
    try:
        with BagWriter(out, custom_data=custom) as writer:
            for k in range(n_frames):
                gen.frame(k, writer.write)
                bar(k + 1)
            count = writer.count
    finally:
        gen.close()
    wall = time.perf_counter() - started
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    return DriveSummary(Path(out), sc.name, seed, duration, count, size, wall)


def simulated_plugins(plugins: Iterable[ModalityPlugin], rig: Rig, without: Iterable[str]) -> list[ModalityPlugin]:
    """The plugins whose simulators run, less `without`; a name there that has no simulator on this rig is an
    error (a typo would otherwise leave the sensor in the drive)."""
    plugins, without = list(plugins), set(without)
    able = [p.name for p in plugins if simulated_sensors(p, rig)]
    unknown = sorted(without - set(able))
    if unknown:
        raise EdgeError(f"--without {', '.join(unknown)}: no plugin simulates such sensors on this rig (those that "
                        f"do: {', '.join(able) or 'none'}; the built-ins are always simulated)")
    return [p for p in plugins if p.name not in without]


def _progress(total: int, label: str, enabled: bool) -> Callable[[int], None]:
    """A tqdm bar on stderr (enabled) or nothing."""
    if not enabled:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="frame", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(n: int) -> None:
        bar.update(n - bar.n)
        if n >= total:
            bar.close()

    return update

