"""Datasets as numpy arrays: IDX files (MNIST, Fashion-MNIST), CIFAR-10, a synthetic set, text.

No torchvision: the IDX format is read with numpy, CIFAR-10 in cifar.py, text in text.py.
Arrays are `uint8` inputs and `int64` labels; normalisation happens once per partition in
`task.py`.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from experiment.cifar import cifar10_dataset
from experiment.dataset import HUB_PREFIX, Dataset, DatasetCorruptError, DatasetMissingError
from experiment.hub import hub_dataset
from experiment.text import role_dataset, text_dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8}
NUM_CLASSES = 10
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500
NOT_SHIPPED = {  # what data-dir must hold for them
    "mnist": "train-images-idx3-ubyte[.gz] and the three other IDX files",
    "cifar10": "cifar-10-python.tar.gz or cifar-10-batches-py/",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetCorruptError(f"{path} cannot be read: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DatasetCorruptError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DatasetCorruptError(f"{path} ends inside its IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    data = np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header_end)
    if data.size != int(np.prod(shape)):
        raise DatasetCorruptError(f"{path} holds {data.size} values, its header says {shape}")
    return data.reshape(shape).copy()  # frombuffer is read-only; torch needs writable


def _find_idx(folder: Path, stem: str, dataset: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    hint = (
        "install it with: apt-get install dataset-fashion-mnist (or run `make install`)"
        if dataset == "fashion-mnist" and folder == FASHION_MNIST_DIR
        else "set data-dir to the folder holding the four IDX files"
    )
    raise DatasetMissingError(f"dataset '{dataset}': {stem}[.gz] not found in {folder}; {hint}")


@lru_cache(maxsize=4)
def load_dataset(
    name: str,
    data_dir: str = "",
    seed: int = 0,
    image_column: str = "image",
    label_column: str = "label",
    text_column: str = "",
) -> Dataset:
    """Load a dataset once per process (cached).

    Parameters
    ----------
    name : str
        `fashion-mnist`, `mnist`, `synthetic`, `cifar10` (see cifar.py), `shakespeare` or
        `shakespeare-roles` (byte windows, see text.py), or `hub:<id or folder>` (hub.py).
    data_dir : str
        Folder of the IDX files (or CIFAR-10's files, or texts); "" means the Debian
        package's folder for Fashion-MNIST, `.cache/shakespeare` for Shakespeare.
    seed : int
        Only used by `synthetic`.
    image_column, label_column, text_column : str
        Only used by `hub:<id or folder>` (see hub.py).
    """
    if name.startswith(HUB_PREFIX):
        return hub_dataset(name, image_column, label_column, text_column)
    if name == "synthetic":
        return synthetic_dataset(seed)
    if name == "shakespeare":
        return text_dataset(data_dir)
    if name == "shakespeare-roles":
        return role_dataset(data_dir)
    if not data_dir and name in NOT_SHIPPED:
        raise DatasetMissingError(
            f"dataset '{name}' is not shipped on this machine; set data-dir to a folder "
            f"holding {NOT_SHIPPED[name]}"
        )
    if name == "cifar10":
        return cifar10_dataset(data_dir)
    folder = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    arrays = {key: read_idx(_find_idx(folder, stem, name)) for key, stem in IDX_FILES.items()}
    dataset = Dataset(
        train_inputs=arrays["train-images"],
        train_labels=arrays["train-labels"].astype(np.int64),
        test_inputs=arrays["test-images"],
        test_labels=arrays["test-labels"].astype(np.int64),
    )
    _check_shapes(dataset, name)
    return dataset


def _check_shapes(dataset: Dataset, name: str) -> None:
    for images, labels in (
        (dataset.train_inputs, dataset.train_labels),
        (dataset.test_inputs, dataset.test_labels),
    ):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DatasetCorruptError(
                f"dataset '{name}': expected (n, 28, 28) images with n labels, "
                f"got {images.shape} and {labels.shape}"
            )
        if len(labels) == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DatasetCorruptError(f"dataset '{name}': labels outside 0..{NUM_CLASSES - 1}")


def synthetic_dataset(seed: int) -> Dataset:
    """A small, learnable, seeded dataset: one random template per class plus noise."""
    rng = np.random.default_rng([seed, 7919])
    templates = rng.uniform(0, 255, size=(NUM_CLASSES, 28, 28))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count, dtype=np.int64) % NUM_CLASSES
        rng.shuffle(labels)
        noise = rng.normal(0, 60, size=(count, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels

    train_inputs, train_labels = draw(SYNTHETIC_TRAIN)
    test_inputs, test_labels = draw(SYNTHETIC_TEST)
    return Dataset(train_inputs, train_labels, test_inputs, test_labels)
