"""`edge drive info`: what a bag holds (topics, types, counts, rates, duration, storage, size, compression).

Rates are measured from the messages' bag times (one raw pass, nothing decoded), so they are true for bags whose
metadata is missing or wrong; topics whose type differs from the contract in topics.py are flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.drives import topics as T
from edge.drives.bag import open_bag


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _chunk_compression(path: Path) -> list[str]:
    """Chunk compressions found in the MCAP summaries (empty for sqlite3 or a summary-less file)."""
    from mcap.reader import make_reader

    found: set[str] = set()
    files = [path] if path.is_file() else sorted(path.glob("*.mcap"))
    for f in files:
        try:
            with f.open("rb") as fh:
                summary = make_reader(fh).get_summary()
            if summary is not None:
                found |= {c.compression or "none" for c in summary.chunk_indexes}
        except Exception:
            continue
    return sorted(found)


def bag_info(path: str | Path) -> dict[str, Any]:
    """Summary of a rosbag2 bag as a JSON-ready dict; damage found while reading is listed under 'diagnostics'."""
    from edge.modalities.registry import registry  # at call time, as known_topics asks it

    path = Path(path)
    with open_bag(path) as bag:
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        count: dict[str, int] = {}
        for m in bag.messages(raw=True):
            first.setdefault(m.topic, m.stamp_ns)
            last[m.topic] = m.stamp_ns
            count[m.topic] = count.get(m.topic, 0) + 1
        # the sensors a recording names by its topics (range sensors, LiDARs: each plugin's recorded_sensors)
        contract = T.known_topics(registry().recorded_sensors(bag.topics))
        topics = []
        for name in sorted(bag.topics):
            info = bag.topics[name]
            n = count.get(name, 0)
            span = (last[name] - first[name]) / 1e9 if n > 1 else 0.0
            qos = info.qos[0] if info.qos else {}
            entry: dict[str, Any] = {
                "name": name, "type": info.msgtype, "count": n,
                "rate_hz": round((n - 1) / span, 3) if span > 0 else None,
                "qos": {"reliability": qos.get("reliability"), "depth": qos.get("depth")} if qos else None,
            }
            spec = contract.get(name)
            if spec is not None and info.msgtype not in spec.types:
                entry["contract_error"] = f"expected {' or '.join(spec.types)}"
            topics.append(entry)
        start = min(first.values()) if first else None
        end = max(last.values()) if last else None
        meta = bag.metadata
        mode = meta.get("compression_mode") or ""
        chunk = [c for c in _chunk_compression(path) if c != "none"]
        compression = f"{meta.get('compression_format')} ({mode})" if mode else (
            f"{'+'.join(chunk)} (mcap chunks)" if chunk else "none")
        return {
            "path": str(path), "storage": bag.storage, "size_bytes": _size_on_disk(path), "compression": compression,
            "start_ns": start, "end_ns": end, "duration_s": (end - start) / 1e9 if start is not None else 0.0,
            "message_count": sum(count.values()), "topics": topics, "diagnostics": list(bag.diagnostics),
            "definitions": dict(sorted(bag.definitions.items())),  # type -> "bag" or the fallback used
        }


def _definitions(defs: dict[str, str]) -> str:
    """Where the message definitions used to decode come from: the bag's own, or a fallback for those it lacks."""
    own = sum(v == "bag" for v in defs.values())
    other = sorted({v for v in defs.values() if v != "bag"})
    parts = [f"from the bag for {own} of {len(defs)} types"] if own else []
    parts += [f"{v} for {sum(x == v for x in defs.values())} types (none in the bag)" for v in other]
    return "; ".join(parts) or "-"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable table in the spirit of `ros2 bag info`."""
    mb = info["size_bytes"] / 2**20
    lines = [
        f"Bag:          {info['path']}",
        f"Storage:      {info['storage']}",
        f"Size:         {mb:.1f} MiB",
        f"Compression:  {info['compression']}",
        f"Duration:     {info['duration_s']:.3f} s",
        f"Start:        {info['start_ns']} ns" if info["start_ns"] is not None else "Start:        (empty)",
        f"End:          {info['end_ns']} ns" if info["end_ns"] is not None else "End:          (empty)",
        f"Messages:     {info['message_count']}",
        f"Definitions:  {_definitions(info.get('definitions', {}))}",
        "Topics:",
    ]
    width = max((len(t["name"]) for t in info["topics"]), default=10)
    twidth = max((len(t["type"]) for t in info["topics"]), default=10)
    for t in info["topics"]:
        rate = f"{t['rate_hz']:8.2f} Hz" if t["rate_hz"] is not None else "       - Hz"
        qos = f"  {t['qos']['reliability']}/{t['qos']['depth']}" if t.get("qos") else ""
        bad = f"  !! {t['contract_error']}" if "contract_error" in t else ""
        lines.append(f"  {t['name']:<{width}}  {t['type']:<{twidth}}  {t['count']:7d}  {rate}{qos}{bad}")
    for d in info["diagnostics"]:
        lines.append(f"warning: {d}")
    return "\n".join(lines)
