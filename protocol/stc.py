"""How STC messages travel: the codec entries, and the catch-up downlink of missed rounds.

A client that missed rounds receives the compressed deltas of those rounds (ArrayRecord
`down`, arrays `<round>.<part>`, the rounds in order under `down.rounds` in the config) and
applies them, in order, to its own copy of the global model (`apply_catch_up`).

Keeping the two copies equal: the server counts a client as holding round r's model only once
the client answered round r + 1's message (a client that raised kept its old state: Flower
discards the context of a failed ClientApp); the client skips the deltas it already applied
(an answer that never reached the server); a client without a copy (a node that lost its
state) fails with `RESYNC` in its reason, and the server sends it the dense model next time.
Every reply says which model it trained from (metric `MODEL`: `model_version`, its round and
fingerprint in one int64 entry, 13 bytes of content): one that differs from the server's (a
corrupted or foreign copy) is rejected and its client gets the dense model next time, as does
a partition whose node changed (a restarted SuperNode).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedcodec import stc
from protocol import keys

CODEC = "stc"
RESYNC = "resync needed"  # in a client's error reason: send me the dense model
RESYNC_CODEC = "float32-resync"  # the dense model sent for that reason (its own log label)


def catch_up_content(deltas: dict[int, stc.Encoded], config: ConfigRecord) -> RecordDict:
    """The message content that carries the compressed `deltas` (round -> delta), in order."""
    config[keys.DOWN_ROUNDS] = list(deltas)
    arrays = ArrayRecord(
        {
            f"{server_round}.{part}": Array(delta.arrays[part])
            for server_round, delta in deltas.items()
            for part in stc.ARRAY_NAMES
        }
    )
    return RecordDict({keys.DOWN: arrays, keys.CONFIG: config})


def apply_catch_up(
    model: dict[str, np.ndarray], content: RecordDict, held_round: int
) -> dict[str, np.ndarray]:
    """`model` (round `held_round`'s) moved by the later deltas a catch-up content carries.

    Returns a new dict; the `down` record is removed from `content`.
    """
    model = {name: value.copy() for name, value in model.items()}
    deltas = content.array_records[keys.DOWN]
    shapes = [value.shape for value in model.values()]
    for server_round in content[keys.CONFIG][keys.DOWN_ROUNDS]:
        if server_round <= held_round:
            continue  # applied already: the server never heard this client's answer
        arrays = {part: deltas[f"{server_round}.{part}"].numpy() for part in stc.ARRAY_NAMES}
        decoded, _ = stc.decode_arrays(arrays, shapes)
        for name, value in zip(model, decoded, strict=True):
            model[name] += value
    del content[keys.DOWN]
    return model


def model_fingerprint(tensors: Iterable[np.ndarray]) -> int:
    """A 32-bit fingerprint of a model's float32 values, in order (BLAKE2b, 4 bytes)."""
    digest = hashlib.blake2b(digest_size=4)
    for tensor in tensors:
        digest.update(np.ascontiguousarray(tensor, dtype=np.float32).tobytes())
    return int.from_bytes(digest.digest(), "big")


def model_version(model_round: int, tensors: Iterable[np.ndarray]) -> int:
    """Round and fingerprint of a model in one int: `model_round` x 2**32 + fingerprint."""
    return (model_round << 32) | model_fingerprint(tensors)


def describe_version(version: object) -> str:
    """A model version as words, for a log line."""
    if not isinstance(version, int) or version < 0:
        return f"no model version ({version!r})"
    return f"round {version >> 32}'s model (fingerprint {version & 0xFFFFFFFF:08x})"


def codec_entries(p_up: float, approx: float, accumulate_up: bool, seed: int) -> dict:
    """The train ConfigRecord entries that ask a client for an STC-encoded update."""
    return {
        keys.CODEC: CODEC,
        keys.STC_P_UP: p_up,
        keys.STC_APPROX: approx,
        keys.STC_ACCUMULATE_UP: accumulate_up,
        keys.SEED: seed,
    }
