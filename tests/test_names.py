"""Policies and backends are defined once (edge/names.py) and serialise as the strings they always were: in
configuration dumps, report JSON, f-strings and the CLIs' choices and error messages."""

from __future__ import annotations

import argparse
import json

import pytest

from edge.config import RuntimeConfig
from edge.names import BACKENDS, POLICIES, BackendName, Policy


def test_values_are_the_strings_of_the_file_formats() -> None:
    assert POLICIES == ("adaptive", "camera", "all") and tuple(Policy) == POLICIES
    assert BACKENDS == ("eager", "onnxruntime", "tensorrt") and tuple(BackendName) == BACKENDS
    for member in (*Policy, *BackendName):
        assert json.dumps(member) == json.dumps(member.value) and f"{member}" == str(member) == member.value
        assert {member.value: 1}[member] == 1  # a member finds the plain string's dict entry (hash and ==)


def test_config_holds_members_and_dumps_plain_strings() -> None:
    cfg = RuntimeConfig(policy="camera", backend="onnxruntime")
    assert cfg.policy is Policy.CAMERA and cfg.backend is BackendName.ONNXRUNTIME
    assert json.dumps(cfg.model_dump()) == json.dumps(cfg.model_dump(mode="json"))
    assert type(cfg.model_dump(mode="json")["policy"]) is str
    assert RuntimeConfig().model_dump(mode="json")["backend"] == "eager"


@pytest.mark.parametrize("command, flag", [(["run", "bag.mcap"], "--policy"), (["run", "bag.mcap"], "--backend"),
                                           (["bench", "bag.mcap"], "--policy"), (["bench", "bag.mcap"], "--backend")])
def test_cli_choices_and_errors_show_the_plain_strings(command: list[str], flag: str, capsys) -> None:
    from edge.runtime import bench, cli

    parser = argparse.ArgumentParser(prog="edge")
    sub = parser.add_subparsers()
    cli.register(sub)
    bench.register(sub)
    values = POLICIES if flag == "--policy" else BACKENDS
    for v in values:
        assert getattr(parser.parse_args(command + [flag, v]), flag[2:]) == v
    with pytest.raises(SystemExit):
        parser.parse_args(command + [flag, "sometimes"])
    err = capsys.readouterr().err
    assert "invalid choice: 'sometimes' (choose from " + ", ".join(repr(v) for v in values) + ")" in err


def test_scheduler_refuses_an_unknown_policy_by_name() -> None:
    from edge.errors import EdgeError
    from edge.runtime.scheduler import Budget, CostModel, QualityTable, Scheduler

    with pytest.raises(EdgeError, match="unknown scheduling policy 'sometimes' \\(adaptive, camera, all\\)"):
        Scheduler(QualityTable({}, {}), CostModel({}), Budget(), ("fisheye",), 1, policy="sometimes")
