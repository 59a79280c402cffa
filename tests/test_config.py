"""Every bad run-config value gives one clear ConfigError naming key, value and what is allowed."""

from __future__ import annotations

import importlib.util
import re

import pytest

from experiment.config import ConfigError, check_selection, parse, pyproject_defaults, resolve
from flower_app.simulation import main as simulation_main
from flower_app.simulation import parse_run_config


def test_pyproject_defaults_parse():
    config = parse(pyproject_defaults())
    assert (config.strategy, config.model, config.dataset) == ("fedavg", "cnn", "fashion-mnist")
    assert config.to_flat()["num-server-rounds"] == config.num_server_rounds


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "strategy",
            "scaffold",
            "strategy='scaffold' is not known; allowed: fedavg, fedavgm, fedprox, fedadam,",
        ),
        ("model", "resnet", "model='resnet' is not known; allowed: cnn, logistic"),
        ("dataset", "cifar100", "dataset='cifar100' is not known; allowed: fashion-mnist, mnist"),
        (
            "dataset",
            "hub:",
            "dataset='hub:' is not known; allowed: fashion-mnist, mnist, synthetic",
        ),
        ("hub.label-column", "", "hub.label-column='' names no column; allowed: the column"),
        ("partitioner", "shard", "partitioner='shard' is not known; allowed: iid, dirichlet"),
        ("fraction-train", 0.0, "fraction-train=0.0 is out of range; allowed: (0, 1]"),
        ("fraction-train", 1.5, "fraction-train=1.5 is out of range; allowed: (0, 1]"),
        ("outlier-norm-ratio", -1.0, "outlier-norm-ratio=-1.0 is out of range; allowed: [0"),
        (
            "outlier-norm-ratio",
            0.5,
            "outlier-norm-ratio=0.5 would reject the median update; allowed: 0 (off) or a number",
        ),
        ("net.rtt-ms", -5.0, "net.rtt-ms=-5.0 is out of range; allowed: [0"),
        ("faults.kind", "explode", "faults.kind='explode' is not known; allowed: none, fail"),
        ("faults.clients", "0,x", "faults.clients='0,x' is not a list of partition ids"),
        ("faults.rounds", "0,2", "faults.rounds='0,2' is not a list of rounds; allowed: e.g. '1'"),
        ("fraction-evaluate", -0.1, "fraction-evaluate=-0.1 is out of range; allowed: [0, 1]"),
        ("num-server-rounds", 0, "num-server-rounds=0 is out of range; allowed: integer >= 1"),
        ("dirichlet-alpha", 0.0, "dirichlet-alpha=0.0 is out of range; allowed: (0, inf)"),
        ("dirichlet-alpha", -1, "dirichlet-alpha=-1 is out of range; allowed: (0, inf)"),
        ("balancedness", 1.2, "balancedness=1.2 is out of range; allowed: (0, 1]"),
        ("classes-per-client", 0, "classes-per-client=0 is out of range"),
        ("lr", 0, "lr=0 is out of range; allowed: (0, inf)"),
        ("batch-size", 2.5, "batch-size=2.5 must be an integer >= 1"),
        ("model", 3, "model=3 must be a string"),
        ("device", "gpu", "device='gpu' is not known; allowed: auto, cpu, cuda"),
        ("data-dir", "/no/such/folder", "data-dir='/no/such/folder' is not a folder"),
        ("stc.p-up", 0.0, "stc.p-up=0.0 is out of range; allowed: (0, 1]"),
        ("stc.p-down", 1.5, "stc.p-down=1.5 is out of range; allowed: (0, 1]"),
        ("stc.approx", -0.5, "stc.approx=-0.5 is out of range; allowed: (0, 1]"),
        ("stc.accumulate-up", 1, "stc.accumulate-up=1 must be true or false"),
        ("quant.scheme", "log", "quant.scheme='log' is not known; allowed: uniform, fixed"),
        ("quant.bits", 9, "quant.bits=9 is out of range; allowed: integer in 1..8"),
        ("quant.bits", 0, "quant.bits=0 is out of range; allowed: integer in 1..8"),
        ("quant.down-bits", 12, "quant.down-bits=12 is out of range; allowed: integer in 0..8"),
        ("quant.refine-bits", 7, "quant.base-bits=2 + quant.refine-bits=7 = 9 bits"),
        ("quant.refine-loss", 1.5, "quant.refine-loss=1.5 is out of range; allowed: [0, 1]"),
        ("quant.refine-loss", 0.3, "quant.refine-loss=0.3 needs quant.scheme='progressive'"),
        ("qsfl.beta", 1.5, "qsfl.beta=1.5 is out of range; allowed: [0, 1]"),
        ("qsfl.beta", -0.1, "qsfl.beta=-0.1 is out of range; allowed: [0, 1]"),
        ("qsfl.upload-fraction", 0.0, "qsfl.upload-fraction=0.0 is out of range; allowed: (0, 1]"),
        ("qsfl.upload-fraction", 1.2, "qsfl.upload-fraction=1.2 is out of range; allowed: (0, 1]"),
        ("qsfl.num-segments", 0, "qsfl.num-segments=0 is out of range; allowed: integer >= 1"),
        (
            "qsfl.num-segments",
            7851,
            "qsfl.num-segments=7851 is more than the 7,850 parameters of model 'logistic'; "
            "allowed: 1..7850",
        ),
        ("qsfl.top-p", 0, "qsfl.top-p=0 is out of range; allowed: (0, 1]"),
        ("qsfl.relevance", "loss", "qsfl.relevance='loss' is not known; allowed: update, weights"),
        ("qsfl.ensure-coverage", "yes", "qsfl.ensure-coverage='yes' must be true or false"),
        ("net.channel", "5g", "net.channel='5g' is not known; allowed: none, random-walk"),
        ("net.policy", "drop", "net.policy='drop' needs a simulated channel"),
        ("net.deadline-s", 0, "net.deadline-s=0 is out of range; allowed: (0, inf)"),
        ("net.deadline-s", -5.0, "net.deadline-s=-5.0 is out of range; allowed: (0, inf)"),
        ("net.overcommit", 0.5, "net.overcommit=0.5 is out of range; allowed: [1, inf)"),
        ("net.min-bps", -1e6, "net.min-bps=-1000000.0 is out of range; allowed: (0, inf)"),
        ("net.max-bps", 5e5, "net.min-bps=1e+06 > net.max-bps=500000; allowed: net.min-bps <="),
        ("net.change-low-bps", 2e6, "net.change-low-bps=2e+06 > net.change-high-bps=1e+06"),
        ("net.distance-max-m", 10.0, "net.distance-min-m=50 > net.distance-max-m=10"),
        ("net.step-s", 0.0, "net.step-s=0.0 is out of range; allowed: (0, inf)"),
        ("net.snr-db", float("inf"), "net.snr-db=inf is out of range"),
        ("net.seconds-per-sample", -0.1, "net.seconds-per-sample=-0.1 is out of range"),
    ],
)
def test_bad_value_names_key_value_and_allowed(flat_config, key, value, message):
    flat_config[key] = value
    with pytest.raises(ConfigError) as error:
        parse(flat_config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_resume_needs_the_name_of_the_run(flat_config):
    flat_config |= {"resume": True, "run-name": ""}
    with pytest.raises(ConfigError, match="resume=true needs the run-name of the run to resume"):
        parse(flat_config)


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match="unknown run-config key 'num-round'; known keys: "):
        resolve({"num-round": 3})


def test_float_code_must_leave_room_for_the_sign(flat_config):
    flat_config.update(
        {"quant.scheme": "float", "quant.exponent-bits": 5, "quant.mantissa-bits": 3}
    )
    with pytest.raises(ConfigError, match="allowed: 1 \\+ exponent \\+ mantissa <= 8"):
        parse(flat_config)


def test_float_presets_set_exponent_and_mantissa(flat_config):
    flat_config.update({"quant.scheme": "e5m2"})
    spec = parse(flat_config).quant.spec
    assert (spec.scheme, spec.exponent_bits, spec.mantissa_bits, spec.label) == (
        "float",
        5,
        2,
        "float-e5m2",
    )


def test_more_clients_per_round_than_nodes(flat_config):
    flat_config["fraction-train"] = 0.05
    with pytest.raises(ConfigError, match="fraction-train=0.05 selects no client out of 10"):
        check_selection(parse(flat_config), clients=10)
    check_selection(parse(flat_config), clients=20)  # 20 x 0.05 = 1 client: fine


def test_run_config_string_parses_toml_values():
    assert parse_run_config("num-server-rounds=3 model='logistic' lr=0.1 stc.p-up=0.01") == {
        "num-server-rounds": 3,
        "model": "logistic",
        "lr": 0.1,
        "stc.p-up": 0.01,
    }
    with pytest.raises(ConfigError, match="quote strings"):
        parse_run_config("model=cnn")


def test_command_line_typo_is_one_line_and_exit_2(capsys):
    code = simulation_main(["--run-config", "model='cnnx'"])
    assert code == 2
    allowed = "cnn, logistic, vgg11, resnet18, lstm, pythia-14m"
    expected = f"error: model='cnnx' is not known; allowed: {allowed}\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"net.channel": "trace", "net.trace-file": "/no/trace.csv"},
            "net.trace-file='/no/trace.csv' is not a file",
        ),
        (
            {"net.channel": "random-walk", "net.policy": "partial"},
            "net.policy='partial' needs uplink='quant' (or strategy='quant') with "
            "quant.scheme='progressive' "
            "(got strategy='fedavg', uplink='none', quant.scheme='uniform')",
        ),
    ],
)
def test_bad_network_settings_are_one_line(flat_config, overrides, message):
    flat_config.update(overrides)
    with pytest.raises(ConfigError) as error:
        parse(flat_config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model": "pythia-14m"},
            "model='pythia-14m' does not fit dataset='synthetic'; allowed with this model: "
            "dataset in shakespeare",
        ),
        (
            {"dataset": "shakespeare"},
            "model='logistic' does not fit dataset='shakespeare'; allowed with this model: "
            "dataset in fashion-mnist, mnist, synthetic",
        ),
        (
            {"model": "vgg11"},
            "model='vgg11' does not fit dataset='synthetic'; allowed with this model: "
            "dataset in cifar10",
        ),
        (
            {"dataset": "cifar10"},
            "model='logistic' does not fit dataset='cifar10'; allowed with this model: "
            "dataset in fashion-mnist, mnist, synthetic",
        ),
        (
            {"model": "pythia-14m", "dataset": "shakespeare", "partitioner": "dirichlet"},
            "partitioner='dirichlet' does not split dataset='shakespeare'; allowed with it: iid",
        ),
        (
            {"model": "lstm", "dataset": "shakespeare-roles", "partitioner": "iid"},
            "partitioner='iid' does not split dataset='shakespeare-roles'; allowed with it: "
            "natural",
        ),
        (
            {"partitioner": "natural"},
            "partitioner='natural' needs a dataset of natural clients; allowed: dataset in "
            "shakespeare-roles",
        ),
    ],
)
def test_a_model_goes_with_the_data_it_reads(flat_config, overrides, message):
    flat_config.update(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(flat_config)


def test_pythia_without_transformers_says_how_to_install_it(flat_config, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    flat_config.update({"model": "pythia-14m", "dataset": "shakespeare", "partitioner": "iid"})
    with pytest.raises(ConfigError, match=r"needs transformers, which is not installed; run `make"):
        parse(flat_config)


def test_qsfl_segments_are_sparsified_or_quantized_not_both(flat_config):
    flat_config.update({"strategy": "qsfl", "qsfl.quantize": True, "qsfl.top-p": 0.1})
    with pytest.raises(ConfigError, match="qsfl.quantize=true with qsfl.top-p=0.1"):
        parse(flat_config)
