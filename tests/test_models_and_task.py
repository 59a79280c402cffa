"""Models (parameter counts as published) and the local training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiment.config import MODEL_PARAMETERS, ConfigError, parse
from experiment.data import synthetic_dataset
from experiment.models import build_model
from experiment.task import (
    client_data,
    compute_device,
    evaluate,
    minibatches,
    round_generator,
    samples_processed,
    to_samples,
    train,
)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    # logistic: 784*10 + 10; cnn: 832 + 51,264 + 3136*512+512 + 5,130 (McMahan et al.)
    assert count(build_model("logistic", 0)) == 7850
    assert count(build_model("cnn", 0)) == 1_663_370
    # the table config.py validates qsfl.num-segments with, without building a model
    assert MODEL_PARAMETERS["cnn"] == 1_663_370 and MODEL_PARAMETERS["logistic"] == 7850


def test_cifar10_models_count_by_hand_and_hold_float32_parameters_only():
    # VGG-11: convs 3->64 1,792; 64->128 73,856; 128->256 295,168; 256->256 590,080;
    # 256->512 1,180,160; three 512->512 of 2,359,808; fc 512->512 twice 262,656; fc 5,130
    vgg = build_model("vgg11", 0)
    assert count(vgg) == MODEL_PARAMETERS["vgg11"] == 9_750_922
    # ResNet-18 (group norm, 2C weights a layer): stem 1,728 + 128; stage 64: 147,968;
    # stage 128: 230,144 + 295,424; stage 256: 919,040 + 1,180,672; stage 512:
    # 3,673,088 + 4,720,640 (each first block with its 1x1 projection); fc 5,130
    resnet = build_model("resnet18", 0)
    assert count(resnet) == MODEL_PARAMETERS["resnet18"] == 11_173_962
    for model in (vgg, resnet):
        # no buffers (no batch norm statistics): the state that travels is the parameters
        assert list(model.buffers()) == []
        assert {value.dtype for value in model.state_dict().values()} == {torch.float32}
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_char_lstm_counts_by_hand_and_predicts_every_next_byte():
    # embedding 256 x 8 = 2,048; LSTM layer 1: 4 gates x 256 x (8 + 256) + 2 x 4 x 256 biases
    # = 272,384; layer 2: 4 x 256 x (256 + 256) + 2,048 = 526,336; fc 256 x 256 + 256 = 65,792
    model = build_model("lstm", 0)
    assert count(model) == MODEL_PARAMETERS["lstm"] == 866_560
    assert list(model.buffers()) == []
    logits = model(torch.zeros((2, 65), dtype=torch.int64))
    assert logits.shape == (2, 256, 64)  # (batch, bytes, predicted positions)


def test_rgb_images_are_standardised_per_channel():
    # one pixel per channel: 0, 255, 51 -> (0 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435,
    # (0.2 - 0.4465) / 0.2616
    images = np.zeros((1, 3, 32, 32), np.uint8)
    images[0, 1], images[0, 2] = 255, 51
    samples = to_samples(images, np.array([3]))
    assert samples.inputs.shape == (1, 3, 32, 32)
    corner = samples.inputs[0, :, 0, 0].tolist()
    assert corner == pytest.approx([-1.98947, 2.12649, -0.94228], abs=1e-5)


def test_pythia_14m_shape_and_bytes():
    pytest.importorskip("transformers")  # the optional extra: make pythia
    model = build_model("pythia-14m", 0)
    # embed_in and embed_out 2 x 50,304 x 128, 6 layers of 2,235,264 (+ final norm 256)
    assert count(model) == MODEL_PARAMETERS["pythia-14m"] == 14_067_712
    state = model.state_dict()
    assert len(state) == 76
    assert sum(v.numel() * v.element_size() for v in state.values()) == 56_270_848
    logits = model(torch.zeros((2, 65), dtype=torch.int64))
    assert logits.shape == (2, 50304, 64)  # (batch, vocabulary, predicted tokens)


def test_text_windows_predict_their_next_bytes_and_accuracy_counts_tokens():
    windows = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.uint8)
    data = to_samples(windows, np.zeros(2, np.int64))
    assert data.labels.tolist() == [[2, 3, 4], [6, 7, 8]]

    class PredictsTwo(torch.nn.Module):  # always predicts byte 2: one token of six right
        def forward(self, tokens):
            logits = torch.zeros(len(tokens), 10, tokens.shape[1] - 1)
            logits[:, 2] = 10.0
            return logits

    _, accuracy = evaluate(PredictsTwo(), data)
    assert accuracy == pytest.approx(1 / 6)


def test_same_seed_same_initial_weights():
    a, b = build_model("cnn", 3), build_model("cnn", 3)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_training_learns_the_synthetic_task():
    data = synthetic_dataset(0)
    train_set = to_samples(data.train_inputs, data.train_labels)
    test_set = to_samples(data.test_inputs, data.test_labels)
    model = build_model("logistic", 0)
    _, before = evaluate(model, test_set)
    train(
        model,
        train_set,
        epochs=1,
        batch_size=32,
        lr=0.05,
        momentum=0.0,
        generator=round_generator(0, 1, 0),
    )
    _, after = evaluate(model, test_set)
    assert before < 0.3 < 0.9 < after


def test_client_training_is_reproducible(flat_config):
    config = parse(flat_config)
    data = client_data(config, partition_id=1, num_partitions=4)
    runs = []
    for _ in range(2):
        model = build_model("logistic", 0)
        loss = train(model, data, 1, 16, 0.05, 0.0, round_generator(0, 2, 1))
        runs.append((loss, model.linear.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_minibatches_by_epochs_or_by_steps():
    generator = round_generator(0, 1, 0)
    by_epochs = list(minibatches(10, 4, epochs=2, steps=0, generator=generator))
    by_steps = list(minibatches(10, 4, epochs=1, steps=5, generator=generator))
    # 10 samples in batches of 4: 4, 4, 2 per pass
    assert [len(b) for b in by_epochs] == [4, 4, 2, 4, 4, 2]
    assert [len(b) for b in by_steps] == [4, 4, 2, 4, 4]
    assert sorted(torch.cat(by_epochs[:3]).tolist()) == list(range(10))  # a pass is a permutation


@pytest.mark.parametrize(
    ("epochs", "steps", "expected"),
    # 120 samples in batches of 50: a pass is 50 + 50 + 20
    [(1, 0, 120), (3, 0, 360), (1, 2, 100), (1, 3, 120), (1, 4, 170), (1, 7, 290)],
)
def test_samples_processed_counts_what_minibatches_yield(epochs, steps, expected):
    generator = torch.Generator().manual_seed(0)
    yielded = sum(len(b) for b in minibatches(120, 50, epochs, steps, generator))
    assert samples_processed(120, 50, epochs, steps) == yielded == expected


def test_an_empty_partition_yields_no_batch_and_never_spins():
    generator = torch.Generator().manual_seed(0)
    assert list(minibatches(0, 50, epochs=1, steps=5, generator=generator)) == []
    assert samples_processed(0, 50, epochs=1, steps=5) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_device_falls_back_to_cpu_and_cuda_without_cuda_is_a_config_error():
    assert compute_device("auto") == torch.device("cpu")
    assert compute_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available here"):
        compute_device("cuda")
