"""Reading IDX files, the Fashion-MNIST copy on this machine, the synthetic set."""

from __future__ import annotations

import gzip
import pickle
import struct

import datasets
import numpy as np
import pytest

from experiment.data import FASHION_MNIST_DIR, load_dataset, read_idx, synthetic_dataset
from experiment.dataset import DatasetCorruptError, DatasetMissingError
from experiment.partition import split_indices
from experiment.text import play_roles, text_dataset
from flower_app.launch import main as launch_main
from tests.support import write_cifar10, write_hub_dataset, write_hub_text, write_plays


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    # Prepare
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    # Execute
    plain = read_idx(tmp_path / "a-idx3-ubyte")
    zipped = read_idx(tmp_path / "a-idx3-ubyte.gz")
    # Assert
    assert plain.shape == (2, 3, 4) and plain[1, 2, 3] == 23
    np.testing.assert_array_equal(plain, zipped)
    plain[0, 0, 0] = 99  # writable (np.frombuffer alone is not)


def test_read_idx_rejects_bad_magic_and_truncated(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros(5, np.uint8))[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty", b"", "bad magic number"),
        ("header-only.gz", gzip.compress(b"\x00\x00\x08\x03\x00"), "ends inside its IDX header"),
        ("truncated.gz", gzip.compress(_idx_bytes(np.zeros(50, np.uint8)))[:-12], "cannot be read"),
        ("not-gzip.gz", _idx_bytes(np.zeros(5, np.uint8)), "cannot be read"),
    ],
)
def test_a_corrupt_idx_file_is_one_dataset_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetCorruptError, match=message) as error:
        read_idx(tmp_path / name)
    assert str(tmp_path / name) in str(error.value) and "\n" not in str(error.value)


def test_inconsistent_idx_files_stop_the_launcher_with_exit_2(tmp_path, capsys):
    # Prepare: 3 training images but 2 labels
    for stem, array in (
        ("train-images-idx3-ubyte", np.zeros((3, 28, 28))),
        ("train-labels-idx1-ubyte", np.zeros(2)),
        ("t10k-images-idx3-ubyte", np.zeros((2, 28, 28))),
        ("t10k-labels-idx1-ubyte", np.zeros(2)),
    ):
        (tmp_path / stem).write_bytes(_idx_bytes(array))
    # Execute
    code = launch_main(["--num-supernodes", "1", "--run-config", f"data-dir='{tmp_path}'"])
    # Assert
    assert code == 2
    assert capsys.readouterr().err == (
        "error: dataset 'fashion-mnist': expected (n, 28, 28) images with n labels, "
        "got (3, 28, 28) and (2,)\n"
    )


def test_fashion_mnist_shapes_and_label_counts():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST missing: `make install` installs dataset-fashion-mnist")
    data = load_dataset("fashion-mnist")
    assert data.train_inputs.shape == (60000, 28, 28)
    assert data.test_inputs.shape == (10000, 28, 28)
    assert data.train_inputs.dtype == np.uint8
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10


def test_data_dir_loads_idx_files_of_the_same_format(tmp_path):
    # Prepare: a tiny MNIST-format folder
    rng = np.random.default_rng(0)
    for name, count in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, size=(count, 28, 28))
        labels = np.arange(count) % 10
        (tmp_path / f"{name}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (tmp_path / f"{name}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    # Execute
    data = load_dataset("mnist", str(tmp_path))
    # Assert
    assert data.train_inputs.shape == (20, 28, 28) and data.test_labels.tolist()[:3] == [0, 1, 2]


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetMissingError, match="set data-dir"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="not shipped"):
        load_dataset("mnist", "")


def test_text_becomes_byte_windows_with_the_last_16_for_testing(tmp_path):
    (tmp_path / "b.txt").write_bytes(bytes(range(65)) * 20)
    (tmp_path / "a.txt").write_bytes(b"x" * 64)
    data = text_dataset(str(tmp_path))
    # a.txt, "\n", b.txt: 64 + 1 + 1300 = 1365 bytes = 21 windows of 65: 5 train, 16 test
    assert data.train_inputs.shape == (5, 65) and data.test_inputs.shape == (16, 65)
    assert data.train_inputs[0].tobytes() == b"x" * 64 + b"\n"
    with pytest.raises(DatasetMissingError, match="no .txt files in"):
        text_dataset(str(tmp_path / "empty"))


def test_synthetic_is_seeded():
    first, again, other = synthetic_dataset(1), synthetic_dataset(1), synthetic_dataset(2)
    np.testing.assert_array_equal(first.train_inputs, again.train_inputs)
    assert not np.array_equal(first.train_inputs, other.train_inputs)
    assert first.train_inputs.shape == (2000, 28, 28)
    assert np.bincount(first.train_labels).tolist() == [200] * 10


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_reads_its_official_python_files(tmp_path, archive):
    # Prepare: 10 images per batch; pixel values = image index + 7 x channel
    write_cifar10(tmp_path, per_batch=10, archive=archive)
    # Execute
    data = load_dataset("cifar10", str(tmp_path))
    # Assert: 5 x 10 training images and 10 test images, channels first; the test batch
    # holds images 50..59; rows are channel-major (channel 1 starts at column 1,024)
    assert data.train_inputs.shape == (50, 3, 32, 32) and data.test_inputs.shape == (10, 3, 32, 32)
    assert data.train_inputs.dtype == np.uint8 and data.train_labels.dtype == np.int64
    assert data.train_labels.tolist() == [i % 10 for i in range(50)]
    assert data.test_inputs[0, :, 0, 0].tolist() == [50, 57, 64]
    assert (data.test_inputs[3, 2] == 53 + 14).all()


def test_a_cifar10_pickle_that_would_run_code_is_refused(tmp_path):
    # Prepare: a "batch" whose unpickling calls os.system
    write_cifar10(tmp_path, archive=False)
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    # Execute / Assert
    with pytest.raises(DatasetCorruptError, match="os.system is not allowed in a CIFAR batch"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (np.zeros((2, 3072), np.uint8), "holds a ndarray, not a dict of data and labels"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.7, 2.0]},
            "labels are float64 of rank 1, not a list of integers",
        ),
    ],
)
def test_a_cifar10_batch_of_another_shape_is_one_clear_error(tmp_path, batch, reason):
    write_cifar10(tmp_path, archive=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetCorruptError, match=f"batch test_batch.*{reason}"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar10_without_its_files_says_what_to_give(tmp_path):
    with pytest.raises(DatasetMissingError, match="cifar-10-python.tar.gz or cifar-10-batches"):
        load_dataset("cifar10", "")
    with pytest.raises(DatasetMissingError, match="neither cifar-10-python.tar.gz nor"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize("form", ["parquet", "disk"])
def test_a_local_copy_of_a_hub_dataset_loads_as_a_hub_id_would(tmp_path, form):
    # Prepare: Parquet files as the Hub stores them (read through flwr-datasets'
    # FederatedDataset, the path of a Hub id), or a save_to_disk folder
    write_hub_dataset(tmp_path / "copy", form)
    # Execute
    data = load_dataset(f"hub:{tmp_path / 'copy'}")
    # Assert: 20 train and 5 test images, every pixel its index, labels index % 10
    assert data.train_inputs.shape == (20, 28, 28) and data.train_inputs.dtype == np.uint8
    assert data.train_inputs[:, 0, 0].tolist() == list(range(20))
    assert data.train_labels.tolist() == [i % 10 for i in range(20)]
    assert data.test_inputs[:, 5, 5].tolist() == list(range(20, 25))


def test_hub_rgb_images_come_channels_first_and_columns_are_named_by_config(tmp_path):
    write_hub_dataset(tmp_path / "copy", "parquet", rgb=True, image="img")
    with pytest.raises(DatasetCorruptError, match="has no column 'image' .*; set hub.image-column"):
        load_dataset(f"hub:{tmp_path / 'copy'}")
    data = load_dataset(f"hub:{tmp_path / 'copy'}", image_column="img")
    assert data.train_inputs.shape == (20, 3, 32, 32)
    assert data.train_inputs[7, :, 3, 4].tolist() == [7, 7, 7]


def test_a_hub_text_dataset_becomes_byte_windows_grouped_by_its_label_column(tmp_path):
    # Prepare: speaker b has rows of 64 + 64 characters, a one of 66, c one of 10
    copy = write_hub_text(tmp_path / "copy")
    # Execute
    data = load_dataset(f"hub:{copy}", label_column="speaker", text_column="text")
    # Assert: b's rows joined by a newline are 129 bytes, 1 window of 65; a's 66 bytes, 1
    # window; c's 10 bytes, none (c is no client). Labels: b 0, a 1 (first appearance).
    assert data.train_inputs.shape == (2, 65) and data.train_inputs.dtype == np.uint8
    assert bytes(data.train_inputs[0]) == b"b" * 64 + b"\n"
    assert bytes(data.train_inputs[1]) == b"a" * 65
    assert data.train_labels.tolist() == [0, 1]
    # the test rows joined (70 + 1 + 60 bytes) make 2 windows; their labels are unused zeros
    assert bytes(data.test_inputs[1]) == b"t" * 5 + b"\n" + b"u" * 59
    assert data.test_labels.tolist() == [0, 0]


def test_a_hub_text_dataset_names_a_missing_or_wrong_column(tmp_path):
    copy = write_hub_text(tmp_path / "copy")
    with pytest.raises(DatasetCorruptError, match="no column 'label' .*; set hub.label-column"):
        load_dataset(f"hub:{copy}", text_column="text")
    with pytest.raises(DatasetCorruptError, match="text-column='row' does not hold strings only"):
        load_dataset(f"hub:{copy}", label_column="", text_column="row")
    with pytest.raises(DatasetCorruptError, match="column 'speaker' makes no window of 65 bytes"):
        load_dataset(f"hub:{copy}", label_column="", text_column="speaker")
    one_group = load_dataset(f"hub:{copy}", label_column="", text_column="text")
    assert one_group.train_labels.tolist() == [0, 0, 0]  # 64+66+64+10 + 3 newlines = 207 bytes


def test_an_unreachable_hub_id_is_one_line(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine offline
    with pytest.raises(DatasetMissingError) as error:
        load_dataset("hub:nobody/no-such-dataset")
    message = str(error.value)
    assert message.startswith("dataset 'hub:nobody/no-such-dataset' is neither reachable")
    assert "\n" not in message


def test_plays_split_into_one_client_per_speaking_role(tmp_path):
    # Prepare: roles of 12, 20 and 5 windows (tests/support.py: write_plays)
    write_plays(tmp_path / "plays")
    # Execute
    data = load_dataset("shakespeare-roles", str(tmp_path / "plays"))
    # Assert: Puck has fewer than 10 windows and is no client; Ham keeps 12 - ceil(1.2) = 10
    # windows to train and holds out 2, Hor 18 and 2; a window's label is its role
    assert data.train_labels.tolist() == [0] * 10 + [1] * 18
    assert data.test_labels.tolist() == [0, 0, 1, 1]
    assert data.train_inputs.shape == (28, 65)
    assert bytes(data.train_inputs[0][:12]) == b"Ham line 000"
    # each 65-byte window is one 64-character speech and its newline: Hor's test windows are
    # its speeches 18 and 19
    assert bytes(data.test_inputs[2][:12]) == b"Hor line 018"
    splits = split_indices(data.train_labels, "natural", 2, seed=0)
    assert [part.tolist() for part in splits] == [list(range(10)), list(range(10, 28))]


def test_a_speech_is_its_lines_without_stage_directions():
    play = "ACT I.\n\nHam.\nTo be, [Aside.] or not\nto be.\n\n[Enter Ghost.]\n\nGhost.\nMark me."
    assert play_roles(play) == {"Ham": ["To be,  or not to be."], "Ghost": ["Mark me."]}
