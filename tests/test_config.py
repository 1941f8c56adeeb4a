import pytest

from cyclelike.config import ConfigError, RunConfig, parse_value
from cyclelike.execution import condition


def test_defaults_validate_and_round_trip():
    config = RunConfig().validate()
    assert RunConfig.from_dict(config.to_dict()) == config
    changed = config.replace(n_images=20, pairing="shuffled")
    assert RunConfig.from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("pairing", "random", ["pairing", "'random'", "aligned, fixed, shuffled"]),
        ("scheme", "unit", ["scheme", "cyclelike"]),
        ("image_size", 48, ["image_size", "48", "powers of two"]),
        ("image_size", 512, ["image_size", "512"]),
        ("n_images", 1, ["n_images", ">= 2"]),
        ("lambda_cyc", -1.0, ["lambda_cyc", ">= 0"]),
        ("dropout", 1.0, ["dropout"]),
        ("batch_size", "5", ["batch_size", "expected int"]),
        ("device", "tpu", ["device", "auto, cpu, cuda"]),
        ("precision", "fp16", ["precision", "fp32, bf16"]),
        ("direction_schedule", "both", ["direction_schedule", "alternate, interleave, joint"]),
        ("data_seed", -1, ["data_seed", ">= 0"]),
        ("seed", -3, ["seed", ">= 0"]),
    ],
)
def test_validate_names_field_value_and_allowed(key, value, words):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({key: value})
    for word in words:
        assert word in str(err.value)


def test_unknown_keys_are_an_error():
    with pytest.raises(ConfigError, match="unknown RunConfig key.*lamda_l1"):
        RunConfig.from_dict({"lamda_l1": 3.0})


def test_paths_required_for_user_data():
    with pytest.raises(ConfigError, match="x_path"):
        RunConfig.from_dict({"data": "folders"})
    with pytest.raises(ConfigError, match="y_path"):
        RunConfig.from_dict({"data": "folders", "x_path": "a"})


def test_int_is_accepted_for_float_fields():
    assert RunConfig.from_dict({"lambda_l1": 3}).lambda_l1 == 3.0


def test_parse_value_uses_field_types():
    assert parse_value("n_images", "20") == 20
    assert parse_value("lambda_cyc", "0.5") == 0.5
    assert RunConfig.from_dict({"fused_adam": parse_value("fused_adam", "false")}).fused_adam == "off"
    with pytest.raises(ConfigError, match="n_images"):
        parse_value("n_images", "many")
    with pytest.raises(ConfigError, match="unknown"):
        parse_value("nope", "1")


@pytest.mark.parametrize("scheme", ["cyclelike", "pix2pix"])
def test_identity_loss_is_refused_where_one_generator_cannot_honour_it(scheme):
    """One G maps y to its partner x for the L1 term; identity would ask it to map y to y as well."""
    with pytest.raises(ConfigError, match=r"lambda_id=0.5.*cyclegan only.*contradict"):
        RunConfig.from_dict({"scheme": scheme, "lambda_id": 0.5})
    assert RunConfig.from_dict({"scheme": "cyclegan", "lambda_id": 0.5}).lambda_id == 0.5


def test_condition_is_everything_but_the_seed_and_execution():
    base = RunConfig()
    assert condition(base.replace(seed=3, threads=1, device="cpu")) == condition(base)
    assert condition(base.replace(epochs=31)) != condition(base)
    assert "direction_schedule" in condition(base) and base.direction_schedule == "alternate"


def test_precision_auto_is_the_condition_the_machine_computes(monkeypatch):
    """precision=auto was kept as "auto": a bf16 and an fp32 machine pooled two arithmetics as one condition."""
    import torch

    auto = RunConfig(device="cpu", precision="auto")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    on_bf16 = condition(auto)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    on_fp32 = condition(auto)
    assert (on_bf16["precision"], on_fp32["precision"]) == ("bf16", "fp32")
    assert on_fp32 == condition(auto.replace(precision="fp32"))


def test_warmup_epochs_only_reads_time_and_is_no_condition():
    """Changing warmup_epochs queued a whole grid again."""
    assert condition(RunConfig(warmup_epochs=1)) == condition(RunConfig(warmup_epochs=4))


def test_a_study_begun_before_the_switches_were_execution_settings_keeps_its_keys(tmp_path):
    """Stores made before fused_upsample, fused_adam and channels_last left the condition hold these keys for
    these conditions, and their trials recorded the switches in `condition`: a sweep resumed there must find its
    trials (not run the grid again) and see no changed fixed value."""
    import optuna
    from conftest import write_sweep

    from study.ledger import changed_fixed, config_key
    from study.spec import load_sweep

    assert config_key(RunConfig()) == "e4132625e2"
    assert config_key(RunConfig(scheme="cyclegan", pairing="shuffled", precision="fp32")) == "64d359d3b1"
    assert config_key(RunConfig(fused_adam="off", replay="on")) == config_key(RunConfig())
    spec = load_sweep(write_sweep(tmp_path, "older"))
    config = spec.config_for({"pairing": "fixed"}, 0)
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"pairing": "fixed"}, value=0.0,
        distributions={"pairing": optuna.distributions.CategoricalDistribution(["aligned", "fixed"])},
        user_attrs={"seed": 0, "condition": {**condition(config), "fused_upsample": True, "fused_adam": True,
                                             "channels_last": False}}))
    assert changed_fixed(study, spec) == {}
