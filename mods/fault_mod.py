"""Client mod that makes chosen clients misbehave (`faults.*`), for robustness experiments.

A client in `faults.clients` misbehaves in a train round (every round, or those in
`faults.rounds`) with probability `faults.rate`, drawn from a stream keyed by (seed, round,
partition); under QSFL in both phases of that round (its scalar report and its segment).
`fail` raises, `hang` holds its reply back `faults.hang-s` seconds, `nan` fills its float
arrays with NaN, `huge` multiplies them by `faults.scale`, `garbage` replaces every array with
random bytes of the same dtype and size, `truncate` cuts every array to half, `examples`
reports a NaN example count, `metrics` adds a foreign metric key, `dtype` sends float arrays
as float64. It sits inside the wire mod and outside the codec mods, so it corrupts the
encoded reply and the sizes logged are those of what it sends.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from experiment.config import FaultConfig, parse
from protocol import keys

FAULT_STREAM = 4
TRAIN_TYPES = (MessageType.TRAIN, keys.UPLOAD)  # the messages whose replies carry an update


def make_fault_mod(run_config: dict[str, Any] | None = None) -> Mod:
    """The mod, reading `faults.*` from `run_config` (or the context's, when None)."""

    def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        flat = run_config or dict(context.run_config)
        if msg.metadata.message_type not in TRAIN_TYPES or flat.get("faults.kind") == "none":
            return call_next(msg, context)  # the usual case: no second parse per message
        config = parse(flat, server=False)
        faults = config.faults
        partition_id = int(context.node_config.get(keys.PARTITION_ID, -1))
        if partition_id not in faults.clients:
            return call_next(msg, context)
        server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
        if faults.rounds and server_round not in faults.rounds:
            return call_next(msg, context)
        rng = np.random.default_rng([config.seed, server_round, partition_id, FAULT_STREAM])
        if rng.random() >= faults.rate:
            return call_next(msg, context)
        if faults.kind == "fail":
            raise RuntimeError(f"injected fault: partition {partition_id} fails")
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if faults.kind == "hang":
            time.sleep(faults.hang_s)
            return reply
        metrics = reply.content.metric_records.get(keys.METRICS)
        if faults.kind in ("examples", "metrics") and metrics is not None:
            metrics[keys.NUM_EXAMPLES if faults.kind == "examples" else "injected"] = float("nan")
            return reply
        arrays = reply.content.array_records.get(keys.ARRAYS)
        if arrays is not None:
            reply.content[keys.ARRAYS] = ArrayRecord(
                {name: Array(corrupt(array.numpy(), faults, rng)) for name, array in arrays.items()}
            )
        return reply

    return fault_mod


def corrupt(values: np.ndarray, faults: FaultConfig, rng: np.random.Generator) -> np.ndarray:
    """`values` as the fault `faults.kind` sends them."""
    floating = values.dtype.kind == "f"
    if faults.kind == "nan" and floating:
        return np.full_like(values, np.nan)
    if faults.kind == "huge" and floating:
        return (values * faults.scale).astype(values.dtype)
    if faults.kind == "garbage":
        raw = rng.integers(0, 256, values.nbytes, dtype=np.uint8)
        return raw.view(values.dtype).reshape(values.shape)
    if faults.kind == "dtype" and floating:
        return values.astype(np.float64)
    if faults.kind == "truncate":
        flat = values.reshape(-1)
        return flat[: flat.size // 2].copy()
    return values
