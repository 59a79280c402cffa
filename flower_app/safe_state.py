"""A checkpoint's object tree in a file that runs no code when read: JSON and raw arrays.

`dump` writes one `.npz` (numpy's zip of raw arrays, read with allow_pickle=False) holding
every ndarray of the tree and the tree itself as JSON, in which each array is a reference;
a value the tree holds twice (one random generator of two links) is written once and
referred to, so that it is shared again when read, as pickle would.
Beyond JSON's own types the tree may hold tuples, sets, dicts with any such keys, numpy
scalars, dtypes and random generators, functools.partial, and instances of this app's classes
and of Flower's strategies (their attributes, or a pydantic model's fields), named by module
and class; `load` imports only classes and functions of those packages. Anything else is
refused on dump (the attribute named), and a file that is not such a tree on load.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from pydantic import BaseModel

TREE = "__tree__"
TRUSTED = (  # modules whose classes and functions a checkpoint may name
    "strategies.",
    "netsim.",
    "fedcodec.",
    "ledger.",
    "experiment.",
    "protocol.",
    "flower_app.",
    "flwr.serverapp.strategy.",
)


class StateError(ValueError):
    """A tree that cannot be written, or a file that is not one this module wrote."""


def dump(tree: Any, path: Path) -> None:
    """Write `tree` to `path` atomically (a temporary file, fsync, rename)."""
    encoder = _Encoder()
    encoded = json.dumps(encoder.encode(tree, "checkpoint"))
    named = {f"a{i}": array for i, array in enumerate(encoder.arrays)}
    named[TREE] = np.frombuffer(encoded.encode("utf-8"), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **named)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(buffer.getbuffer())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def load(path: Path) -> Any:
    """The tree `dump` wrote to `path`; StateError for anything else (damaged, foreign)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        tree = json.loads(arrays.pop(TREE).tobytes().decode("utf-8"))
        return _Decoder(arrays).decode(tree)
    except StateError:
        raise
    except Exception as error:  # a damaged zip or JSON: any of a dozen types, one message
        raise StateError(f"{type(error).__name__}: {' '.join(str(error).split())}") from None


class _Encoder:
    """A tree as JSON nodes {"k": kind, "v": body}; a mutable value met again is a reference
    to its first node ({"k": "ref", "v": n}), so that what was shared stays shared (two links
    drawing from one random generator go on drawing from one)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.memo: dict[int, int] = {}  # id -> node number
        self.alive: list[Any] = []  # the values memo's ids belong to

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.generic):
            return self.encode(value.item(), where)
        if isinstance(value, np.dtype):
            return {"k": "dtype", "v": value.str}
        if isinstance(value, tuple | frozenset):
            items = sorted(value, key=repr) if isinstance(value, frozenset) else value
            kind = "tuple" if isinstance(value, tuple) else "frozenset"
            return {"k": kind, "v": [self.encode(item, f"{where}[]") for item in items]}
        if isinstance(value, type) or inspect.isfunction(value):
            return {"k": "function", "v": _trusted_name(value, where)}
        if id(value) in self.memo:
            return {"k": "ref", "v": self.memo[id(value)]}
        self.memo[id(value)] = len(self.memo)
        self.alive.append(value)
        node = {"m": self.memo[id(value)]}
        return node | self._mutable(value, where)

    def _mutable(self, value: Any, where: str) -> dict:
        """The node of a value that may be shared: its kind and body."""
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise StateError(f"{where}: an array of Python objects cannot be checkpointed")
            self.arrays.append(value)
            return {"k": "nd", "v": len(self.arrays) - 1}
        if type(value) in (list, set):
            items = sorted(value, key=repr) if isinstance(value, set) else value
            kind = "list" if isinstance(value, list) else "set"
            return {"k": kind, "v": [self.encode(item, f"{where}[]") for item in items]}
        if type(value) is dict:
            pairs = [
                [self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
            return {"k": "dict", "v": pairs}
        if isinstance(value, np.random.Generator):
            return {"k": "rng", "v": self.encode(value.bit_generator.state, where)}
        if isinstance(value, ArrayRecord):
            named = {n: a.numpy() for n, a in value.items()}
            return {"k": "arrays", "v": self.encode(named, where)}
        if isinstance(value, functools.partial):
            parts = (value.func, value.args, value.keywords)
            return {"k": "partial", "v": self.encode(parts, where)}
        name = _trusted_name(type(value), where)
        if isinstance(value, BaseModel):
            return {"k": "model", "v": name, "state": self.encode(dict(value), where)}
        if not hasattr(value, "__dict__"):
            raise StateError(f"{where}: a {type(value).__name__} cannot be checkpointed")
        return {"k": "object", "v": name, "state": self.encode(dict(vars(value)), where)}


def _trusted_name(named: Any, where: str) -> str:
    """`module:qualname` of a class or function of a trusted module."""
    module, qualname = named.__module__, named.__qualname__
    if not module.startswith(TRUSTED) or "<" in qualname:
        raise StateError(f"{where}: a {module}.{qualname} cannot be checkpointed")
    return f"{module}:{qualname}"


class _Decoder:
    """The tree of `_Encoder`'s nodes, shared values shared again."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.memo: dict[int, Any] = {}

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if not isinstance(node, dict) or not isinstance(node.get("k"), str) or "v" not in node:
            raise StateError(f"not a checkpoint tree: {str(node)[:60]}")
        kind, body = node["k"], node["v"]
        if kind == "ref":
            if body not in self.memo:
                raise StateError(f"a reference to node {body!r}, not met before")
            return self.memo[body]
        if kind == "dtype":
            return np.dtype(body)
        if kind in ("tuple", "frozenset"):
            return (tuple if kind == "tuple" else frozenset)(self.decode(item) for item in body)
        if kind == "function":
            return _trusted(body)
        if kind in ("list", "dict", "object"):  # registered before their parts (cycles)
            value = self._empty(kind, body)
            self.memo[node.get("m")] = value
            self._fill(kind, value, node)
            return value
        value = self._whole(kind, body, node)
        self.memo[node.get("m")] = value
        return value

    def _empty(self, kind: str, body: Any) -> Any:
        if kind == "object":
            cls = _trusted(body)
            return cls.__new__(cls)
        return [] if kind == "list" else {}

    def _fill(self, kind: str, value: Any, node: dict) -> None:
        if kind == "list":
            value.extend(self.decode(item) for item in node["v"])
        elif kind == "dict":
            value.update((self.decode(k), self.decode(v)) for k, v in node["v"])
        else:
            value.__dict__.update(self.decode(node["state"]))

    def _whole(self, kind: str, body: Any, node: dict) -> Any:
        if kind == "nd":
            return self.arrays[f"a{body}"]
        if kind == "set":
            return {self.decode(item) for item in body}
        if kind == "rng":
            state = self.decode(body)
            generator = getattr(np.random, state["bit_generator"])()
            generator.state = state
            return np.random.Generator(generator)
        if kind == "arrays":
            return ArrayRecord({n: Array(v) for n, v in self.decode(body).items()})
        if kind == "partial":
            func, args, keywords = self.decode(body)
            return functools.partial(func, *args, **keywords)
        if kind == "model":
            return _trusted(body).model_construct(**self.decode(node["state"]))
        raise StateError(f"not a checkpoint tree: unknown kind '{kind}'")


def _trusted(name: Any) -> Any:
    """The class or function `module:qualname` names, from a trusted module only."""
    module, _, qualname = str(name).partition(":")
    if not module.startswith(TRUSTED) or not qualname:
        raise StateError(f"the checkpoint names {name!r}, which this app does not trust")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found
