"""The stages the runtime times and costs, derived from the plugins' declarations instead of named modalities.

A modality's stage is its name, or `<name>@<keep>` when its plugin declares several keep ratios
(`ModalityPlugin.keep_ratios`, the camera's token pruning): each is a cost of its own. The fusion head is a stage
of a plan exactly when `PerceptionStack.run` runs it: with two BEV modalities or more (one alone is decoded inside
its own stage). The names ("camera@0.5", "fusion") are those of reports and saved cost tables.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.modalities.interface import ModalityPlugin
from edge.modalities.registry import registry

FUSION = "fusion"  # the fusion head's stage (edge.encoders.stack.FUSION)
Settings = dict[str, float]  # modality -> its keep ratio, as PerceptionStack.run takes them


def _plugins() -> dict[str, ModalityPlugin]:
    return {p.name: p for p in registry()}


def _ratios(name: str, plugins: dict[str, ModalityPlugin]) -> tuple[float, ...]:
    """Its keep ratios when it has several (its stage carries the ratio), else () (a name not registered too)."""
    p = plugins.get(name)
    return p.keep_ratios if p is not None and len(p.keep_ratios) > 1 else ()


def fuses(modalities: Iterable[str]) -> bool:
    """Whether a plan of these modalities runs the fusion head (two BEV modalities or more)."""
    bev = registry().bev_names
    return sum(m in bev for m in set(modalities)) > 1


def components(modalities: Iterable[str], keep: float) -> list[str]:
    """The stages a plan runs at its keep ratio, in its order, then the fusion head's when it runs."""
    mods, plugins = tuple(modalities), _plugins()
    parts = [f"{m}@{keep:g}" if _ratios(m, plugins) else m for m in mods]
    return parts + ([FUSION] if fuses(mods) else [])


def every_stage(modalities: Iterable[str]) -> list[str]:
    """Every stage these modalities may run: each at each of its keep ratios, and the fusion head's when it runs."""
    mods, plugins = tuple(modalities), _plugins()
    parts = [s for m in mods for s in ([f"{m}@{k:g}" for k in _ratios(m, plugins)] or [m])]
    return parts + ([FUSION] if fuses(mods) else [])


def plan_keeps(modalities: Iterable[str]) -> tuple[float, ...]:
    """The keep ratios a plan of these modalities is planned at (a plan has one, given to each of them that has
    several: `settings`): the ratios they all declare, in the first one's order; (1.0,) when none has several."""
    plugins = _plugins()
    declared = [_ratios(m, plugins) for m in modalities if _ratios(m, plugins)]
    if not declared:
        return (1.0,)
    return tuple(k for k in declared[0] if all(k in r for r in declared[1:]))


def settings(modalities: Iterable[str], keep: float) -> Settings:
    """The plan's keep ratio for those of its modalities that have several."""
    plugins = _plugins()
    return {m: keep for m in modalities if _ratios(m, plugins)}


def passes(modalities: Iterable[str]) -> list[tuple[tuple[str, ...], Settings]]:
    """Runs that time every stage of these modalities once: all of them at their first keep ratio (the fusion head
    with them), then each one with several keep ratios alone at each further one."""
    mods, plugins = tuple(modalities), _plugins()
    first = (mods, {m: _ratios(m, plugins)[0] for m in mods if _ratios(m, plugins)})
    return [first] + [((m,), {m: k}) for m in mods for k in _ratios(m, plugins)[1:]]


def run_of(stage: str, usable: Iterable[str]) -> tuple[tuple[str, ...], Settings]:
    """The run that times one stage: the fusion head with the usable BEV modalities, `<name>@<keep>` its modality
    at that ratio, any other its modality alone."""
    if stage == FUSION:
        bev = registry().bev_names
        return tuple(m for m in usable if m in bev), {}
    name, _, keep = stage.partition("@")
    return (name,), ({name: float(keep)} if keep else {})
