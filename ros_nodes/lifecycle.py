"""What every mpnp-edge lifecycle node shares: declared parameters, transitions reported through the lifecycle
(never a crash), and parameter changes validated against the one runtime configuration.

Why one base: the composite/perception node (runtime_node.py) and the split graph's LLM node (llm_node.py) must
fail, refuse and recover identically; a subclass supplies `_configure`, `_activate`, `_stop_io`, `release` and
`_accept_parameters` (what a validated change does to it). Built on a class given at run time, because `edge`
without ROS must not import rclpy.
"""

from __future__ import annotations

import traceback
from typing import Any

from edge.errors import ConfigError, EdgeError
from ros_nodes.parameters import current_values, declare, node_options, validate


def managed_base(lifecycle_base: type) -> type:
    """A subclass of rclpy's LifecycleNode (`lifecycle_base`) with the shared transitions and parameter checks."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.lifecycle import TransitionCallbackReturn as R

    class ManagedNode(lifecycle_base):
        def __init__(self, name: str, **kwargs: Any) -> None:
            super().__init__(name, **kwargs)
            self.options = {o.name: o for o in node_options()}
            self.problems = declare(self)  # values refused at declaration: configure fails naming them
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self.state = "unconfigured"
            self.cfg: Any = None
            self._pubs: dict[str, Any] = {}
            self._subs: list[Any] = []

        # ------------------------------------------------------------ transitions
        def _guard(self, what: str, fn: Any) -> Any:
            try:
                return fn()
            except (EdgeError, OSError) as exc:
                self.get_logger().error(f"{what} failed: {exc}")
                return R.FAILURE
            except Exception:  # noqa: BLE001 - reported through the lifecycle (ERROR), never a crash
                self.get_logger().error(f"{what} failed unexpectedly:\n{traceback.format_exc()}")
                return R.ERROR

        def validated_parameters(self) -> Any:
            """The declared parameters as a RuntimeConfig; every value refused at declaration is logged and the
            first raised (ConfigError naming the key), so configure fails with the reason."""
            where = f"parameters of {self.get_fully_qualified_name()}"
            if self.problems:
                for key, problem in list(self.problems.items())[1:]:
                    self.get_logger().error(str(ConfigError(where, key, problem)))
                key, problem = next(iter(self.problems.items()))
                raise ConfigError(where, key, problem)
            return validate(current_values(self), where)

        def on_configure(self, state: Any) -> Any:
            return self._guard("configure", self._configure)

        def on_activate(self, state: Any) -> Any:
            return self._guard("activate", lambda: self._activate(state))

        def _activate_publishers(self, state: Any) -> Any:
            """rclpy's own activate (the lifecycle publishers start publishing), for a subclass's `_activate`."""
            return lifecycle_base.on_activate(self, state)

        def on_deactivate(self, state: Any) -> Any:
            return self._guard("deactivate", lambda: self._deactivate(state))

        def _deactivate(self, state: Any) -> Any:
            self._stop_io()
            self.state = "inactive"
            return super().on_deactivate(state)

        def _destroy_subscriptions(self) -> None:
            for sub in self._subs:
                self.destroy_subscription(sub)
            self._subs = []

        def _destroy_publishers(self) -> None:
            for pub in self._pubs.values():
                self.destroy_lifecycle_publisher(pub)
            self._pubs = {}

        def on_cleanup(self, state: Any) -> Any:
            return self._guard("cleanup", self.release)

        def on_shutdown(self, state: Any) -> Any:
            return self._guard("shutdown", self.release)

        def on_error(self, state: Any) -> Any:
            self.release()
            return R.SUCCESS  # back to unconfigured: configure may be tried again

        # ------------------------------------------------------------ parameters
        def _on_set_parameters(self, params: list[Any]) -> Any:
            changes = {p.name: p.value for p in params if p.name in self.options}
            if not changes:
                return SetParametersResult(successful=True)
            static = [n for n in changes if not self.options[n].dynamic]
            if static and self.state != "unconfigured":
                return SetParametersResult(successful=False, reason=(
                    f"{', '.join(static)}: read at configure, cannot change while the node is {self.state}; "
                    "deactivate and clean up the node, set it, then configure again"))
            values = {**current_values(self), **{n: float(v) if self.options[n].kind is float else v
                                                  for n, v in changes.items()}}
            try:
                cfg = validate(values, "parameter set")
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            for n in changes:
                self.problems.pop(n, None)
            self._accept_parameters({n: values[n] for n in changes}, cfg)
            return SetParametersResult(successful=True)

        def _accept_parameters(self, changes: dict[str, Any], cfg: Any) -> None:
            """A validated change of `changes` (the whole configuration would now be `cfg`): apply what may."""

    return ManagedNode
