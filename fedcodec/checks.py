"""What a decoder accepts: the one error a malformed encoded update raises, and input checks.

A decoder sees arrays that crossed a network from a client that may be faulty: any name,
dtype, shape or value. Each decoder checks them first (`expect_names`, `typed`) and raises
`DecodeError` for anything it cannot decode; `decoder` turns the ValueErrors of the deeper
checks (a truncated stream, a count beyond its tensor) into it, so a caller handles one type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class DecodeError(ValueError):
    """An encoded update that does not decode: wrong names, dtypes, lengths or values."""


def decoder(function: Callable[..., T]) -> Callable[..., T]:
    """Make every ValueError of `function` a DecodeError (with the same message)."""

    @functools.wraps(function)
    def checked(*args, **kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except DecodeError:
            raise
        except ValueError as error:
            raise DecodeError(str(error)) from error

    return checked


def expect_names(arrays: dict, names: Iterable[str], codec: str) -> None:
    """Raise DecodeError unless `arrays` holds exactly `names`."""
    if set(arrays) != set(names):
        expected, got = ", ".join(sorted(names)), ", ".join(sorted(map(str, arrays)))
        raise DecodeError(f"expected the {codec} arrays {expected}, got {got}")


def typed(arrays: dict, name: str, dtype: type, length: int | None = None) -> np.ndarray:
    """The array `name`: one-dimensional, of exactly `dtype` (and `length`), or DecodeError."""
    if name not in arrays:
        raise DecodeError(f"the encoded update lacks its '{name}' array")
    value = arrays[name]
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype) or value.ndim != 1:
        described = (
            f"{value.dtype} with shape {value.shape}"
            if isinstance(value, np.ndarray)
            else type(value).__name__
        )
        raise DecodeError(f"'{name}' is {described}; expected a 1-d {np.dtype(dtype)} array")
    if length is not None and value.size != length:
        raise DecodeError(f"'{name}' has {value.size} entries; expected {length}")
    return value
