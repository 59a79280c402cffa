"""What every dataset reader returns, and the errors a dataset that cannot be used raises."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HUB_PREFIX = "hub:"  # dataset = "hub:<id or folder>": any image dataset of the Hub
IMAGE_KINDS = {(28, 28): "grey", (3, 32, 32): "rgb"}  # image shapes the models here read


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


def input_kind(inputs: np.ndarray) -> str:
    """What a model must read to take `inputs`: "grey", "rgb", "text" (2-d windows) or ""."""
    if inputs.ndim == 2:
        return "text"
    return IMAGE_KINDS.get(inputs.shape[1:], "")
