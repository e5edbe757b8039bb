"""The runtime's closed vocabularies, each defined once: scheduling policies and inference backends.

Why one module with no imports of the project: the configuration (edge.config, pydantic), the scheduler, the
backends (which import torch), the CLIs and the ROS node all name these values; a module that imports nothing of
edge can sit below all of them without pulling torch into a config check or a cycle into the graph. Why string
enums: a member is a `str` equal to its value, so YAML, report.json, CLI choices and ROS parameters keep the very
same strings (`json.dumps`, f-strings and `==` see "adaptive"), while code gets one spelling it can check.
Python 3.10 (JetPack 6) has no `enum.StrEnum`; the fallback below behaves the same for these uses.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - exercised on Python 3.10 only
    class StrEnum(str, Enum):
        """enum.StrEnum of Python 3.11: str() and format() give the value."""

        __str__ = str.__str__
        __format__ = str.__format__


class Policy(StrEnum):
    """Which modalities run: the scheduler's choice, or a static baseline."""

    ADAPTIVE = "adaptive"  # the scheduler chooses every frame
    CAMERA = "camera"  # static: every camera (the surround fisheyes and the front camera)
    ALL = "all"  # static: every modality


class BackendName(StrEnum):
    """Where the encoders' network parts run (edge.backends; `Backend` there is the engine interface)."""

    EAGER = "eager"  # PyTorch as is; needs no engine
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


# Plain strings, for argparse `choices` (its error message shows repr() of each choice) and messages.
POLICIES: tuple[str, ...] = tuple(p.value for p in Policy)
BACKENDS: tuple[str, ...] = tuple(b.value for b in BackendName)
