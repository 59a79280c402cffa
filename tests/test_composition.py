"""The wrapper around Flower's strategies: every codec with FedAvg, FedProx, FedAdam and Krum
on the real ClientApp, and exactly Flower's own model when nothing is compressed."""

from __future__ import annotations

import numpy as np
import pytest

from experiment.axes import AGGREGATIONS
from experiment.config import MODEL_PARAMETERS, ConfigError, parse
from strategies.aggregation import build_aggregation
from tests.support import CLIENTS, ClientGrid, initial_model, read_rows, wrapped_run

CODECS = {  # run-config of each codec on the axes
    "stc": {"uplink": "stc", "downlink": "stc"},
    "topk": {"uplink": "topk"},
    "randomk (a plugin)": {"uplink": "randomk"},
    "qsgd (a plugin)": {"uplink": "qsgd"},
    "efsignsgd (a plugin)": {"uplink": "efsignsgd"},
    "bf16 (a plugin)": {"uplink": "bf16"},
    "absmax8 (a user's plugin)": {"uplink": "absmax8", "codec-modules": "tests.user_codec"},
    "quant 4-bit": {"uplink": "quant", "quant.bits": 4},
    "quant progressive": {"uplink": "quant", "quant.scheme": "progressive"},
    "quant e4m3, 4-bit model down": {
        "uplink": "quant",
        "quant.scheme": "e4m3",
        "downlink": "quant",
        "quant.down-bits": 4,
    },
    "qsfl segments": {"selection": "qsfl", "uplink": "segments"},
    "qsfl quantized segments": {"selection": "qsfl", "uplink": "quant", "quant.bits": 4},
}
PARAMETERS = {"fedprox": {"aggregation.proximal-mu": 0.1}}


@pytest.mark.parametrize("aggregation", ["fedavg", "fedprox", "fedadam", "krum"])
@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_composes_with_flowers_strategies(flat_config, tmp_path, aggregation, codec):
    flat_config.update(
        {"strategy": aggregation, "fraction-train": 1.0, "wire.layout": "compact"}
        | CODECS[codec]
        | PARAMETERS.get(aggregation, {})
    )
    if aggregation == "krum" and codec.startswith("qsfl"):  # segments need a mean
        with pytest.raises(ConfigError, match="stitches segments by their weighted mean"):
            parse(flat_config)
        return

    model, recorder, _ = wrapped_run(flat_config, tmp_path / "run")

    assert all(np.isfinite(value).all() for value in model.values())
    assert not all(np.array_equal(value, 0) for value in model.values())
    # every update of both rounds used (an STC client out of step with the server would be
    # left out in round 2)
    delivered = [int(row["delivered"]) for row in read_rows(recorder, "rounds.csv")]
    assert delivered[0] > 0 and delivered[1] == delivered[0]
    uploads = [r for r in read_rows(recorder) if r["direction"] == "up"]
    assert {r["status"] for r in uploads} == {"delivered"}
    assert all(int(r["transport_bytes"]) > 0 for r in uploads)
    sent = [r for r in uploads if r["phase"] in ("train", "upload") and r["codec"] != "scalars"]
    # every update travelled compressed: fewer payload bits than the float32 model's
    model_bits = 32 * MODEL_PARAMETERS["logistic"]
    assert sent and all(int(r["payload_bits"]) < model_bits for r in sent)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_without_codecs_the_wrapper_gives_exactly_flowers_model(flat_config, tmp_path, aggregation):
    flat_config.update(
        {"strategy": aggregation, "fraction-train": 1.0} | PARAMETERS.get(aggregation, {})
    )
    flower_alone = build_aggregation(parse(flat_config))
    result = flower_alone.start(
        grid=ClientGrid(flat_config, CLIENTS),
        initial_arrays=initial_model(flat_config),
        num_rounds=2,
    )
    expected = {name: array.numpy() for name, array in result.arrays.items()}

    wrapped, _, _ = wrapped_run(flat_config, tmp_path / "run")

    assert expected.keys() == wrapped.keys()
    for name, value in expected.items():
        assert np.array_equal(wrapped[name], value), name


def test_fedprox_mu_reaches_the_clients_and_holds_them_near_the_global_model(flat_config, tmp_path):
    flat_config.update({"fraction-train": 1.0, "wire.layout": "compact"})
    start = {name: array.numpy() for name, array in initial_model(flat_config).items()}

    def moved(overrides: dict, run: str) -> float:
        model, _, _ = wrapped_run(flat_config | overrides, tmp_path / run)
        return sum(float(np.sum((model[n] - start[n]) ** 2)) for n in start)

    fedavg = moved({"strategy": "fedavg"}, "fedavg")
    fedprox_off = moved({"strategy": "fedprox", "aggregation.proximal-mu": 0.0}, "off")
    fedprox = moved({"strategy": "fedprox", "aggregation.proximal-mu": 10.0}, "on")

    assert fedprox_off == fedavg  # mu = 0: FedAvg's training exactly
    assert fedprox < 0.5 * fedavg
