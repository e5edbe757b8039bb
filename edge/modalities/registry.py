"""The installed modality plugins: discovered through the entry point group `edge.modalities`, checked, ordered.

Discovery is the convention of pytest plugins and rosbags' storage plugins: a package lists
`name = "module:attribute"` under `[project.entry-points."edge.modalities"]`, the attribute is a
`ModalityPlugin` whose `name` is the entry point's name. The built-ins are declared the same way (pyproject.toml).

Bad plugins never stop the others: one that fails to import, declares a malformed interface, or claims a modality
name or a topic already taken is left out, and the reason, naming its entry point, is logged once and kept in
`Registry.problems`; the runtime runs on what it has. `strict=True` (tests, CI) raises PluginError instead.
Order: the built-ins first in `BUILTINS` order, then the others by name; on a clash the earlier one is kept.
Discovery reads every installed distribution's metadata, so `registry()` is cached per process (`reload()` in tests);
module-level lists built from it (e.g. edge.runtime.scheduler.MODALITIES) are read once, at import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from edge.drives.topics import TopicSpec
from edge.errors import PluginError
from edge.modalities.builtin import BUILTINS
from edge.modalities.interface import ModalityPlugin

if TYPE_CHECKING:
    from edge.sensors.rig import Rig

GROUP = "edge.modalities"
_PLACEHOLDER = "\0"  # a sensor name no rig has, to see where a plugin puts a sensor's topics
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registry:
    """The usable plugins in order, where each came from (`name = value` of its entry point), and the problems."""

    plugins: tuple[ModalityPlugin, ...]
    sources: tuple[str, ...]
    problems: tuple[PluginError, ...] = ()

    def __iter__(self) -> Iterator[ModalityPlugin]:
        return iter(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    def __getitem__(self, name: str) -> ModalityPlugin:
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(f"no modality plugin '{name}' (installed: {', '.join(self.names) or 'none'})")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.plugins)

    @property
    def bev_names(self) -> tuple[str, ...]:
        """The modalities whose BEV features the fusion head takes."""
        return tuple(p.name for p in self.plugins if p.bev)

    @property
    def health_streams(self) -> tuple[str, ...]:
        """Every health stream key the plugins declare, in plugin order."""
        return tuple(dict.fromkeys(s for p in self.plugins for s in p.health_streams))

    def rig_sensors(self, rig: Rig) -> dict[str, tuple[str, ...]]:
        """Per modality, its sensors on this rig (the argument of edge.drives.topics.known_topics)."""
        return {p.name: p.sensors(rig) for p in self.plugins}

    def recorded_sensors(self, topics: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Per modality that names its sensors from a recording's topics (`recorded_sensors`: the ultrasonic's
        `/ultrasonic/<name>`, a LiDAR's `/lidar/<name>/points`), its sensors among these topic names, sorted as the
        synchroniser plans them; the others are left out (the argument of edge.drives.topics.known_topics, which
        gives them their defaults). A plugin whose `recorded_sensors` raises is left out too."""
        names = tuple(topics)
        out: dict[str, tuple[str, ...]] = {}
        for p in self.plugins:
            if p.recorded_sensors is not None:
                try:
                    out[p.name] = tuple(sorted(p.recorded_sensors(names)))
                except Exception as exc:  # a third-party plugin's code: its topics are then not known here
                    log.debug("modality %r: recorded_sensors raised %s: %s", p.name, type(exc).__name__, exc)
        return out

    def topic_namespaces(self) -> tuple[str, ...]:
        """The namespaces its sensor topics live under, `/<first name>/` ("/fisheye/", "/ultrasonic/", "/audio/",
        ...), from each plugin's topics for its default sensors and for a placeholder sensor name (range sensors and
        LiDARs have no default sensor): a topic under one of them is sensor data even for a sensor the contract
        does not list (edge.drives.bag.is_sensor_topic). A topic at the root (one name) gives none."""
        found: dict[str, None] = {}
        for p in self.plugins:
            for sensors in (p.default_sensors, (_PLACEHOLDER,)):
                try:
                    specs = tuple(p.topics(sensors))
                except Exception:  # a plugin that refuses the placeholder: its default sensors' topics still count
                    continue
                for spec in specs:
                    head, sep, _ = spec.name[1:].partition("/")
                    if spec.sensor and sep and head and _PLACEHOLDER not in head:
                        found[f"/{head}/"] = None
        return tuple(found)


def _label(ep: EntryPoint) -> str:
    return f"'{ep.name}' ({ep.name} = {ep.value})"


def _load(ep: EntryPoint) -> tuple[ModalityPlugin, tuple[TopicSpec, ...]]:
    """The plugin an entry point declares and its default topics; PluginError naming the entry point if unusable."""
    try:
        obj = ep.load()
    except PluginError as exc:  # ModalityPlugin refused the declaration while its module was imported
        raise PluginError(_label(ep), f"malformed declaration: {exc.problem}") from None
    except Exception as exc:  # any error of a third-party import: report it, keep the others running
        raise PluginError(_label(ep), f"failed to import: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, ModalityPlugin):
        raise PluginError(_label(ep), f"malformed declaration: {ep.value} is a {type(obj).__name__}, "
                                      "not an edge.modalities.ModalityPlugin")
    if obj.name != ep.name:
        raise PluginError(_label(ep), f"malformed declaration: declares modality '{obj.name}' under the entry "
                                      f"point name '{ep.name}' (they must be the same)")
    try:
        topics = tuple(obj.topics(obj.default_sensors))
    except Exception as exc:
        raise PluginError(_label(ep), f"malformed declaration: topics({obj.default_sensors}) raised "
                                      f"{type(exc).__name__}: {exc}") from None
    bad = [t for t in topics if not isinstance(t, TopicSpec)]
    if bad:
        raise PluginError(_label(ep), f"malformed declaration: topics must be TopicSpec, got {bad[0]!r}")
    return obj, topics


def build(points: Iterable[EntryPoint], strict: bool = False) -> Registry:
    """A registry of these entry points (the installed ones: `discover`); see the module docstring."""
    problems: list[PluginError] = []
    loaded: list[tuple[EntryPoint, ModalityPlugin, tuple[TopicSpec, ...]]] = []
    for ep in sorted({(ep.name, ep.value): ep for ep in points}.values(), key=lambda e: (e.name, e.value)):
        try:
            loaded.append((ep, *_load(ep)))
        except PluginError as exc:
            problems.append(exc)
    builtin = {id(p): i for i, p in enumerate(BUILTINS)}
    loaded.sort(key=lambda x: (0, builtin[id(x[1])], "") if id(x[1]) in builtin else (1, x[1].name, x[0].value))
    names: dict[str, str] = {}  # modality -> entry point that has it
    owners: dict[str, str] = {}  # topic -> entry point that reads it
    plugins, sources = [], []
    for ep, plugin, topics in loaded:
        source = f"{ep.name} = {ep.value}"
        if plugin.name in names:
            problems.append(PluginError(_label(ep), f"claims the modality name '{plugin.name}' of {names[plugin.name]}"))
            continue
        taken = [(t.name, owners[t.name]) for t in topics if t.name in owners]
        if taken:
            problems.append(PluginError(_label(ep), f"claims the topic '{taken[0][0]}' of {taken[0][1]}"))
            continue
        names[plugin.name] = source
        owners.update({t.name: source for t in topics})
        plugins.append(plugin)
        sources.append(source)
    if not plugins and not problems:
        problems.append(PluginError(f"group '{GROUP}'", "no plugin installed (is mpnp-edge installed? `make setup`)"))
    for p in problems:
        log.warning("%s; left out", p)
    if strict and problems:
        raise PluginError(problems[0].plugin, "; ".join([problems[0].problem] + [str(p) for p in problems[1:]]))
    return Registry(tuple(plugins), tuple(sources), tuple(problems))


def discover(strict: bool = False) -> Registry:
    """A fresh registry of the installed entry points (uncached: `registry()` is the cached one)."""
    return build(entry_points(group=GROUP), strict=strict)


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The installed plugins, discovered once per process."""
    return discover()


def reload() -> Registry:
    """Discover again (tests, or after installing a package into a running interpreter)."""
    registry.cache_clear()
    return registry()
