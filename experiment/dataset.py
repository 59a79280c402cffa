"""What every dataset reader returns, and the errors a dataset that cannot be used raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(Exception):
    """A dataset that cannot be used; the message (one line) says which file and why."""


class DatasetMissingError(DatasetError, FileNotFoundError):
    """The dataset files are not where the config says; the message says how to get them."""


class DatasetCorruptError(DatasetError, ValueError):
    """A dataset file that is truncated, not gzip, not IDX, or inconsistent with the others."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split of uint8 images (n, 28, 28) or text windows (n, 65).

    Image labels are in 0..9; text windows are their own labels (the label arrays are zeros).
    """

    train_inputs: np.ndarray
    train_labels: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray
