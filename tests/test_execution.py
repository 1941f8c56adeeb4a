"""What `auto` resolves to on each kind of device comes from cyclelike/defaults/<kind>.json, and each value there names
the measurement it rests on, or none: on a GPU nothing is switched on by default that was never measured there, and a
run says whether its auto values rest on a measurement (`resolved.basis`)."""

import json

import pytest
import torch

from cyclelike import execution
from cyclelike.config import SWITCHES, ConfigError, RunConfig
from cyclelike.execution import (
    AUTO_KEYS,
    DEFAULTS,
    KINDS,
    basis,
    condition,
    load_defaults,
    resolve_execution,
    resolve_precision,
    resolved_tags,
)

CUDA = torch.device("cuda")  # resolved here without a GPU: only its kind is read


def test_every_kind_has_a_defaults_file_that_says_why_and_on_what_each_value_rests():
    for kind in KINDS:
        defaults = load_defaults(kind)
        assert defaults["kind"] == kind
        for key in AUTO_KEYS:
            assert defaults["why"][key], (kind, key)
            measurement = defaults["basis"][key]
            if measurement is not None:
                assert {"device", "torch", "commit", "command"} <= set(defaults["measurements"][measurement])


def test_on_a_gpu_auto_switches_on_only_what_a_measurement_on_a_gpu_backs(monkeypatch):
    """Every switch auto turns on under CUDA, and bf16, rests on a measurement in cuda.json; precision=auto is what
    that file says was faster, not whatever the GPU can compute (bf16 from Ampere on)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    cuda = DEFAULTS["cuda"]
    for name, on in resolve_execution(RunConfig(), CUDA).items():
        assert not on or cuda["basis"][name] is not None, name
    precision = resolve_precision("auto", CUDA)
    assert precision == cuda["auto"]["precision"] and (precision == "fp32" or cuda["basis"]["precision"] is not None)
    assert condition(RunConfig())["precision"] in ("fp32", "bf16")  # resolved, never "auto"


def test_precision_auto_on_a_cpu_resolves_as_before_so_a_studys_keys_hold(monkeypatch):
    """The CPU rows keep bf16 where it is native and fp32 where it is emulated: condition() (a study's keys) is
    unchanged there."""
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(execution, "native_bf16_cpu", lambda native=native: native)
        assert resolve_precision("auto", torch.device("cpu")) == expected
        assert condition(RunConfig(device="cpu"))["precision"] == expected


def test_a_defaults_file_that_says_too_little_is_refused_by_name(tmp_path):
    broken = json.loads(json.dumps(DEFAULTS["cuda"]))
    del broken["auto"]["replay"]
    broken["auto"]["precision"] = "auto"
    broken["basis"]["fused_adam"] = "a measurement it does not hold"
    (tmp_path / "cuda.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"cuda\.json: missing or invalid auto\.precision, auto\.replay, "
                                          r"basis\.fused_adam"):
        load_defaults("cuda", tmp_path)


def test_a_runs_basis_says_whether_its_auto_values_rest_on_measurements_of_its_kind(monkeypatch):
    monkeypatch.setitem(DEFAULTS["cuda"], "basis", {k: "m" for k in AUTO_KEYS} | {"replay": None})
    assert basis(RunConfig(), CUDA) == "partly measured"
    assert basis(RunConfig(replay="off"), CUDA) == "measured"  # what it left at auto is measured
    assert basis(RunConfig(precision="fp32", **{k: "off" for k in SWITCHES}), CUDA) == "set"
    monkeypatch.setitem(DEFAULTS["cuda"], "basis", dict.fromkeys(AUTO_KEYS))
    assert basis(RunConfig(), CUDA) == "none"
    for kind in ("cpu", "cpu-bf16"):  # replay is no choice off a GPU
        monkeypatch.setitem(DEFAULTS[kind], "basis", {k: "m" for k in AUTO_KEYS} | {"replay": None})
    assert basis(RunConfig(), torch.device("cpu")) == "measured"
    tags = resolved_tags(RunConfig(replay="off"), "cuda", "fp32", {"fused_adam": False, "replay": "fallback"})
    assert tags == {"resolved.device": "cuda", "resolved.precision": "fp32", "resolved.fused_adam": "off",
                    "resolved.replay": "fallback", "resolved.basis": "none"}
