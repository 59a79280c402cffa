"""What is checked before anything starts: one ConfigError line, no SuperLink, no Ray."""

from __future__ import annotations

import pytest

from experiment.config import ConfigError
from flower_app.launch import main as launch_main
from flower_app.preflight import preflight
from flower_app.run_lock import held
from tests.support import write_hub_dataset, write_hub_text


def test_a_valid_run_gets_its_run_folder(flat_config, tmp_path):
    config, run_dir = preflight(flat_config, num_supernodes=10)
    assert run_dir == tmp_path / "outputs" / "test-run"
    assert config.model == "logistic"


def test_a_hub_dataset_must_hold_what_the_model_reads(flat_config, tmp_path):
    # Prepare: 32x32 RGB images on the Hub's layout; the logistic model reads 28x28 grey
    write_hub_dataset(tmp_path / "copy", "parquet", rgb=True)
    flat_config |= {"dataset": f"hub:{tmp_path / 'copy'}", "partitioner": "iid"}
    # Execute / Assert: caught before anything starts; with a model for RGB it goes through
    with pytest.raises(ConfigError, match="model='logistic' does not read the rgb inputs"):
        preflight(flat_config, num_supernodes=4)
    config, _ = preflight(flat_config | {"model": "vgg11"}, num_supernodes=4)
    assert config.dataset.startswith("hub:")


def test_a_hub_text_dataset_is_split_by_its_groups_for_a_text_model(flat_config, tmp_path):
    # Prepare: a text dataset whose rows make windows for two speakers (support.write_hub_text)
    copy = write_hub_text(tmp_path / "copy")
    flat_config |= {
        "dataset": f"hub:{copy}",
        "hub.text-column": "text",
        "hub.label-column": "speaker",
        "partitioner": "natural",
        "fraction-train": 1.0,
    }
    # Execute / Assert: windows are text for the LSTM, not for the logistic model; two
    # speakers make two windows, two natural clients, not three
    with pytest.raises(ConfigError, match="model='logistic' does not read the text inputs"):
        preflight(flat_config, num_supernodes=2)
    with pytest.raises(ConfigError, match="cannot split 2 samples among 3 clients"):
        preflight(flat_config | {"model": "lstm"}, num_supernodes=3)
    config, _ = preflight(flat_config | {"model": "lstm"}, num_supernodes=2)
    assert config.hub.text_column == "text"


def test_a_fraction_that_selects_no_client(flat_config):
    flat_config["fraction-train"] = 0.05
    with pytest.raises(ConfigError, match=r"fraction-train=0.05 selects no client out of 10"):
        preflight(flat_config, num_supernodes=10)


def test_more_clients_than_samples(flat_config):
    # the synthetic dataset has 2,000 training samples
    with pytest.raises(ConfigError, match="cannot split 2000 samples among 2001 clients"):
        preflight(flat_config | {"partitioner": "iid"}, num_supernodes=2001)


def test_partitions_that_would_be_empty(flat_config):
    # Dirichlet(0.5) over 2,000 samples and 2,000 clients leaves 705 partitions empty
    with pytest.raises(ConfigError, match=r"leaves 705 partition\(s\) without a sample"):
        preflight(flat_config | {"fraction-train": 0.5}, num_supernodes=2000)


def test_an_output_dir_that_is_a_file(flat_config, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        preflight(flat_config | {"output-dir": str(tmp_path / "a-file")}, num_supernodes=10)


def test_a_run_folder_that_already_holds_a_run(flat_config, tmp_path):
    run_dir = tmp_path / "outputs" / "test-run"
    run_dir.mkdir(parents=True)
    (run_dir / "run_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="run-name='test-run': .* already holds a run"):
        preflight(flat_config, num_supernodes=10)


def test_resuming_a_run_another_command_still_writes_is_refused(flat_config, tmp_path):
    # Prepare: the run's ServerApp (here: this test) holds its folder
    run_dir = tmp_path / "outputs" / "test-run"
    flat_config["resume"] = True
    # Execute / Assert: one line, before anything is read or truncated
    with held(run_dir), pytest.raises(ConfigError, match="test-run is in use by another command"):
        preflight(flat_config, num_supernodes=10)


def test_the_launcher_says_it_in_one_line_with_exit_2(tmp_path, capsys):
    code = launch_main(
        [
            "--num-supernodes",
            "3",
            "--run-config",
            f"dataset='synthetic' model='logistic' fraction-train=0.2 output-dir='{tmp_path}'",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        "error: fraction-train=0.2 selects no client out of 3; allowed: fraction-train >= 1/3\n"
    )
