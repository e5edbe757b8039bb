"""Error types shown to users as one clear line naming the file, topic or key at fault."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class for errors caused by user input (files, configuration, arguments)."""


class ConfigError(EdgeError):
    """A configuration or calibration file is invalid; the message names the file and the key."""

    def __init__(self, path: object, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{self.path}: key '{key}': {problem}")


class BagError(EdgeError):
    """A bag cannot be read or written as asked; the message names the bag and, where known, the topic."""


class ReportError(EdgeError):
    """A run's report directory cannot be read or recovered; the message names the file."""


class PluginError(EdgeError):
    """A modality plugin cannot be used: it fails to import, declares a malformed interface, or claims a name or a
    topic another plugin has. `plugin` names it (the entry point `name = module:attr`, or the declaration)."""

    def __init__(self, plugin: str, problem: str) -> None:
        self.plugin, self.problem = plugin, problem
        super().__init__(f"modality plugin {plugin}: {problem}")
