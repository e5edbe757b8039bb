"""Import rules of the layout (issue 11), checked on the source: every import statement of every module under
edge/, at any depth (module level, inside functions and classes, under `if TYPE_CHECKING`, in `try`), relative
imports resolved, and `importlib.import_module("...")` / `__import__("...")` with a literal name.

Why a walk of the AST rather than import-linter: the project's late imports (inside functions, to keep start-up
light and ROS optional) are exactly where a forbidden import would hide, the walk sees them by construction, and it
needs no dependency. A name built at run time (edge/cli.py's command table) is not seen; none of the rules' modules
does that.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ROS client libraries and message/interface packages; rosbags (a pure-Python bag library) is not ROS.
ROS = re.compile(r"^(rclpy|rcl_\w+|rclcpp\w*|rosidl_\w+|ament_\w+|launch|launch_ros|message_filters|tf2_\w+|"
                 r"cv_bridge|image_transport|\w+_msgs|\w+_srvs|\w+_interfaces)(\.|$)")
LLM_CORE = tuple(f"edge.llm.{m}" for m in ("loading", "arch", "attention", "connector", "aligner", "cost", "errors"))


@dataclass(frozen=True)
class Rule:
    name: str
    sources: tuple[str, ...]  # modules (or packages: their submodules too) the rule applies to
    forbidden: re.Pattern[str]


RULES = (
    Rule("edge never imports ROS (rclpy only under ros_nodes/)", ("edge",), ROS),
    Rule("the LLM core never imports drives, sensors, encoders or the runtime", LLM_CORE,
         re.compile(r"^edge\.(drives|sensors|encoders|runtime)(\.|$)")),
    Rule("encoders never import the runtime", ("edge.encoders",), re.compile(r"^edge\.runtime(\.|$)")),
    Rule("kernels never import the runtime or the LLM", ("edge.kernels",), re.compile(r"^edge\.(runtime|llm)(\.|$)")),
    Rule("the frame type sits below everything (imports no other package of edge)", ("edge.frames",),
         re.compile(r"^edge\.")),
    Rule("modality declarations never import what iterates them (encoders, perception, runtime, LLM)",
         ("edge.modalities",), re.compile(r"^edge\.(encoders|perception|runtime|llm)(\.|$)")),
)
# Known violations allowed for now, as (rule name, importing module, imported module), each with the reason and
# the issue that removes it. Empty: keep it so.
EXCEPTIONS: frozenset[tuple[str, str, str]] = frozenset()


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file; `from a import b` yields a and a.b (b may be one)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            yield from ((f"{target}.{a.name}", node.lineno) for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield node.args[0].value, node.lineno


def violations(root: Path, package: str = "edge",
               exceptions: frozenset[tuple[str, str, str]] = EXCEPTIONS) -> dict[tuple[str, str, str], str]:
    """{(rule name, importing module, imported module): "file:line"} for every import a rule forbids."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        module = module_name(path, root)
        rules = [r for r in RULES if any(module == s or module.startswith(s + ".") for s in r.sources)]
        for target, line in imports(path, module) if rules else ():
            for r in rules:
                if r.forbidden.search(target) and (r.name, module, target) not in exceptions:
                    found.setdefault((r.name, module, target), f"{path.relative_to(root)}:{line}")
    return found


def test_edge_keeps_the_import_rules() -> None:
    found = violations(ROOT)
    assert not found, "import rules broken:\n" + "\n".join(f"{w}: {m} imports {t} ({r})"
                                                          for (r, m, t), w in sorted(found.items()))


def test_every_exception_is_still_needed() -> None:
    """An exception that no longer matches an import is stale: delete it."""
    assert EXCEPTIONS <= set(violations(ROOT, exceptions=frozenset()))


PLANTED = {
    "edge/__init__.py": "",
    "edge/llm/__init__.py": "",
    "edge/llm/aligner.py": "def f():\n    from edge.encoders.scene_tokens import X\n",
    "edge/llm/cost.py": "from ..runtime import scheduler\n",
    "edge/llm/qa_table.py": "from edge.runtime import cli\n",  # not in the LLM core: allowed
    "edge/kernels/__init__.py": "import importlib\nM = importlib.import_module('edge.llm.arch')\n",
    "edge/encoders/stack.py": "class A:\n    def g(self):\n        if True:\n            import edge.runtime.context\n",
    "edge/drives/bag.py": "try:\n    from rosbags.rosbag2 import Reader\n    import rclpy.node\nexcept ImportError:\n"
                          "    pass\n",
    "edge/runtime/node.py": "def h():\n    from sensor_msgs.msg import Image\n    from rcl_interfaces.msg import P\n",
}


def test_planted_violations_are_found_at_any_depth(tmp_path: Path) -> None:
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert sorted(set(found.values())) == [
        "edge/drives/bag.py:3", "edge/encoders/stack.py:4", "edge/kernels/__init__.py:2", "edge/llm/aligner.py:2",
        "edge/llm/cost.py:1", "edge/runtime/node.py:2", "edge/runtime/node.py:3"], found
    assert (RULES[1].name, "edge.llm.cost", "edge.runtime.scheduler") in found  # relative import resolved
    assert not any("rosbags" in t or "qa_table" in m for _, m, t in found)
    assert violations(tmp_path, exceptions=frozenset(found)) == {}  # a listed exception is let through


@pytest.mark.parametrize("name, ros", [("rclpy", True), ("rclpy.lifecycle", True), ("sensor_msgs.msg", True),
                                       ("rcl_interfaces.msg", True), ("rosbags.rosbag2", False),
                                       ("rosbags.typesys", False), ("edge.drives.messages", False)])
def test_what_counts_as_ros(name: str, ros: bool) -> None:
    assert bool(ROS.search(name)) is ros
