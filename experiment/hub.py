"""Any image or text dataset of the Hugging Face Hub, through flwr-datasets, or a local copy.

`dataset = "hub:<id>"` loads the `train` and `test` splits with flwr-datasets'
`FederatedDataset` (which calls `datasets.load_dataset`): a Hub id when the machine is online,
or the path of a local copy: a folder of Parquet files as the Hub stores them (the same code
path), or a folder written by `DatasetDict.save_to_disk`. The columns `hub.image-column` and
`hub.label-column` become uint8 images (28x28 grey, or 32x32 RGB, channels first) and int64
labels; this project's partitioners then split the training set as for any other dataset.

With `hub.text-column` set, the dataset is text: the rows of each value of the label column
(a speaker, an author, a user: the natural clients) are joined and cut into byte windows, as
for Shakespeare's roles, labelled by the group's index; `hub.label-column = ""` puts every row
in one group. A test window's label is unused (zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from experiment.dataset import (
    HUB_PREFIX,
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    input_kind,
)
from experiment.text import grouped_windows

if TYPE_CHECKING:  # imported where a hub dataset is loaded: over a second of start-up
    import datasets

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "hf-datasets"


def hub_dataset(name: str, image_column: str, label_column: str, text_column: str = "") -> Dataset:
    """The train and test splits of `hub:<id or folder>` as numpy arrays."""
    source = name.removeprefix(HUB_PREFIX)
    splits = {split: _load_split(source, split) for split in ("train", "test")}
    if text_column:
        train = _text_arrays(splits["train"], name, text_column, label_column)
        test_windows = _text_arrays(splits["test"], name, text_column, "")[0]
        return Dataset(*train, test_windows, np.zeros(len(test_windows), np.int64))
    train = _arrays(splits["train"], name, image_column, label_column)
    return Dataset(*train, *_arrays(splits["test"], name, image_column, label_column))


def _load_split(source: str, split: str) -> datasets.Dataset:
    """One split, from a `save_to_disk` folder or through FederatedDataset (id or Parquet)."""
    import datasets
    from flwr_datasets import FederatedDataset

    folder = Path(source)
    try:
        if (folder / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(folder))[split]
        federated = FederatedDataset(
            dataset=str(folder.resolve()) if folder.is_dir() else source,
            partitioners={"train": 1},
            shuffle=False,
            cache_dir=str(CACHE_DIR),
        )
        return federated.load_split(split)
    except KeyError:
        raise DatasetCorruptError(
            f"dataset '{HUB_PREFIX}{source}' has no '{split}' split; it needs 'train' and 'test'"
        ) from None
    except (ConnectionError, OSError, ValueError) as error:  # offline, no such id or folder
        raise DatasetMissingError(
            f"dataset '{HUB_PREFIX}{source}' is neither reachable on the Hub nor a local copy "
            f"(a folder of Parquet files or of save_to_disk): {str(error).splitlines()[0]}"
        ) from None


def _arrays(
    data: datasets.Dataset, name: str, image_column: str, label_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, int64 labels) of a split, images channels first."""
    _check_columns(data, name, {"hub.image-column": image_column, "hub.label-column": label_column})
    columns = data.select_columns([image_column, label_column]).with_format("numpy")[:]
    images, labels = np.asarray(columns[image_column]), np.asarray(columns[label_column])
    if images.ndim == 4 and images.shape[-1] in (1, 3):  # (n, H, W, C) as images decode
        images = images.transpose(0, 3, 1, 2)
        images = images[:, 0] if images.shape[1] == 1 else images
    if images.dtype != np.uint8 or input_kind(images) in ("", "text"):
        raise DatasetCorruptError(
            f"dataset '{name}': images of shape {images.shape[1:]} and dtype {images.dtype}; "
            "allowed: uint8 28x28 grey or 32x32 RGB"
        )
    return images, labels.astype(np.int64)


def _text_arrays(
    data: datasets.Dataset, name: str, text_column: str, label_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """(byte windows, group indices) of a split's text, grouped by the label column's values."""
    _check_columns(data, name, {"hub.text-column": text_column, "hub.label-column": label_column})
    texts = data[text_column]
    if not all(isinstance(text, str) for text in texts):
        raise DatasetCorruptError(
            f"dataset '{name}': hub.text-column='{text_column}' does not hold strings only"
        )
    windows, labels = grouped_windows(
        texts, data[label_column] if label_column else [0] * len(texts)
    )
    if not len(windows):
        raise DatasetCorruptError(
            f"dataset '{name}': the text of column '{text_column}' makes no window of "
            f"{windows.shape[1]} bytes"
        )
    return windows, labels


def _check_columns(data: datasets.Dataset, name: str, columns: dict[str, str]) -> None:
    """Every named column (key -> column; "" names none) exists in the split."""
    for key, column in columns.items():
        if column and column not in data.column_names:
            present = ", ".join(data.column_names)
            raise DatasetCorruptError(
                f"dataset '{name}' has no column '{column}' (it has {present}); set {key}"
            )
