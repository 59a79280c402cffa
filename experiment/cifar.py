"""CIFAR-10 from its official python files, read with pickle and numpy (no torchvision).

`data-dir` holds `cifar-10-python.tar.gz` (as downloaded from the dataset's page) or the
folder it unpacks to, `cifar-10-batches-py/`: five training batches and one test batch, each
a pickled dict with `data` (10,000 x 3,072 uint8, channel-major rows) and `labels`.
The pickles are read by an unpickler that builds plain containers and numpy arrays only, so
a file from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from experiment.dataset import Dataset, DatasetCorruptError, DatasetMissingError

ARCHIVE, FOLDER = "cifar-10-python.tar.gz", "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SHAPE = (3, 32, 32)  # channels first, as torch wants them
ALLOWED_GLOBALS = {  # what numpy's pickles of uint8 arrays need, and nothing else
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that refuses every global but numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def cifar10_dataset(data_dir: str) -> Dataset:
    """The 50,000 training and 10,000 test images of the folder's CIFAR-10 files."""
    batches = _read_batches(Path(data_dir))
    train = [_images_and_labels(batches[name], name) for name in TRAIN_BATCHES]
    test_images, test_labels = _images_and_labels(batches[TEST_BATCH], TEST_BATCH)
    return Dataset(
        train_inputs=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_inputs=test_images,
        test_labels=test_labels,
    )


def _read_batches(folder: Path) -> dict[str, bytes]:
    """The raw bytes of the six batch files, from the archive or the unpacked folder."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if (folder / FOLDER).is_dir():
        missing = [name for name in names if not (folder / FOLDER / name).is_file()]
        if missing:
            raise DatasetCorruptError(f"{folder / FOLDER} lacks {', '.join(missing)}")
        return {name: (folder / FOLDER / name).read_bytes() for name in names}
    if not (folder / ARCHIVE).is_file():
        raise DatasetMissingError(
            f"dataset 'cifar10': neither {ARCHIVE} nor {FOLDER}/ in {folder}; set data-dir to "
            "the folder holding the python version of CIFAR-10"
        )
    try:
        with tarfile.open(folder / ARCHIVE, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [name for name in names if name not in members]
            if missing:
                raise DatasetCorruptError(f"{folder / ARCHIVE} lacks {', '.join(missing)}")
            return {name: archive.extractfile(members[name]).read() for name in names}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetCorruptError(f"{folder / ARCHIVE} cannot be read: {error}") from None


def _images_and_labels(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (n, 3, 32, 32) uint8 images and int64 labels in 0..9."""
    try:
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(batch, dict):
            raise TypeError(f"it holds a {type(batch).__name__}, not a dict of data and labels")
        data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise DatasetCorruptError(f"CIFAR-10 batch {name} cannot be read: {error}") from None
    size = int(np.prod(SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (size,):
        raise DatasetCorruptError(f"CIFAR-10 batch {name}: data is not n x {size} uint8")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DatasetCorruptError(
            f"CIFAR-10 batch {name}: labels are {labels.dtype} of rank {labels.ndim}, "
            "not a list of integers"
        )
    labels = labels.astype(np.int64)
    if len(labels) != len(data) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DatasetCorruptError(f"CIFAR-10 batch {name}: labels do not match the images")
    return data.reshape(-1, *SHAPE), labels
