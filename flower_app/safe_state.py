"""A checkpoint's object tree in a file that runs no code when read: JSON and raw arrays.

`dump` writes one `.npz` (numpy's zip of raw arrays, read with allow_pickle=False) holding
every ndarray of the tree and the tree itself as JSON, in which each array is a reference.
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
    arrays: list[np.ndarray] = []
    encoded = json.dumps(_encode(tree, arrays, "checkpoint"))
    named = {f"a{i}": array for i, array in enumerate(arrays)}
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
        return _decode(tree, arrays)
    except StateError:
        raise
    except Exception as error:  # a damaged zip or JSON: any of a dozen types, one message
        raise StateError(f"{type(error).__name__}: {' '.join(str(error).split())}") from None


def _encode(value: Any, arrays: list[np.ndarray], where: str) -> Any:
    """`value` as JSON, its arrays appended to `arrays`; `where` names it in errors."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise StateError(f"{where}: an array of Python objects cannot be checkpointed")
        arrays.append(value)
        return {"nd": len(arrays) - 1}
    if isinstance(value, np.generic):
        return _encode(value.item(), arrays, where)
    if isinstance(value, np.dtype):
        return {"dtype": value.str}
    if isinstance(value, list | tuple | set | frozenset):
        kind = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}[type(value)]
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return {kind: [_encode(item, arrays, f"{where}[]") for item in items]}
    if isinstance(value, dict) and type(value) is dict:
        return {
            "dict": [
                [_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, np.random.Generator):
        return {"rng": _encode(value.bit_generator.state, arrays, where)}
    if isinstance(value, ArrayRecord):
        return {"arrays": _encode({n: a.numpy() for n, a in value.items()}, arrays, where)}
    if isinstance(value, functools.partial):
        parts = (value.func, value.args, value.keywords)
        return {"partial": _encode(parts, arrays, where)}
    if isinstance(value, type) or inspect.isfunction(value):
        return {"function": _trusted_name(value, where)}
    name = _trusted_name(type(value), where)
    if isinstance(value, BaseModel):
        return {"model": name, "fields": _encode(dict(value), arrays, where)}
    if not hasattr(value, "__dict__"):
        raise StateError(f"{where}: a {type(value).__name__} cannot be checkpointed")
    return {"object": name, "state": _encode(dict(vars(value)), arrays, where)}


def _trusted_name(named: Any, where: str) -> str:
    """`module:qualname` of a class or function of a trusted module."""
    module, qualname = named.__module__, named.__qualname__
    if not module.startswith(TRUSTED) or "<" in qualname:
        raise StateError(f"{where}: a {module}.{qualname} cannot be checkpointed")
    return f"{module}:{qualname}"


def _decode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    if isinstance(tree, list) or not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise StateError(f"not a checkpoint tree: {str(tree)[:60]}")
    kind, body = next(iter(tree.items()))
    if kind == "nd":
        return arrays[f"a{body}"]
    if kind == "dtype":
        return np.dtype(body)
    if kind in ("list", "tuple", "set", "frozenset"):
        items = [_decode(item, arrays) for item in body]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
    if kind == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in body}
    if kind == "rng":
        state = _decode(body, arrays)
        generator = getattr(np.random, state["bit_generator"])()
        generator.state = state
        return np.random.Generator(generator)
    if kind == "arrays":
        return ArrayRecord({n: Array(v) for n, v in _decode(body, arrays).items()})
    if kind == "partial":
        func, args, keywords = _decode(body, arrays)
        return functools.partial(func, *args, **keywords)
    if kind == "function":
        return _trusted(body)
    if kind == "model":
        return _trusted(body).model_construct(**_decode(tree["fields"], arrays))
    if kind == "object":
        cls = _trusted(body)
        instance = cls.__new__(cls)
        instance.__dict__.update(_decode(tree["state"], arrays))
        return instance
    raise StateError(f"not a checkpoint tree: unknown entry '{kind}'")


def _trusted(name: Any) -> Any:
    """The class or function `module:qualname` names, from a trusted module only."""
    module, _, qualname = str(name).partition(":")
    if not module.startswith(TRUSTED) or not qualname:
        raise StateError(f"the checkpoint names {name!r}, which this app does not trust")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found
