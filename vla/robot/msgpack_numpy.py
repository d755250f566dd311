"""msgpack with numpy arrays, wire-compatible with the openpi websocket client.

Arrays travel as msgpack maps ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": [..]}`` and numpy scalars as ``{b"__npgeneric__": True, b"data": item, b"dtype": ..}``,
the encoding openpi's `msgpack_numpy` uses, so an openpi client can talk to our server and ours
to an openpi server.

Why not pickle (or numpy's `allow_pickle`): decoding a message from the network must never be
able to run code. The decoder only ever builds plain containers, numbers, strings, bytes and
numeric arrays: dtype strings are matched against a strict pattern (bool, signed/unsigned int,
float; never object, void/structured, string or datetime dtypes), and the byte count must equal
the shape's element count times the item size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

# bool, ints and floats, any byte order: "|b1", "<i4", ">u2", "<f8", "=f4" ...
_ALLOWED_DTYPE = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248])$")
MAX_NDIM = 16


class DecodeError(ValueError):
    """A message that is not valid msgpack, or holds an array this codec refuses to build."""


def _check_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, bytes):
        dtype = dtype.decode("ascii", errors="replace")
    if not isinstance(dtype, str) or not _ALLOWED_DTYPE.match(dtype):
        raise DecodeError(
            f"array dtype {dtype!r} is not allowed; use a bool, int or float dtype such as "
            f"'|u1', '<f4' or '<f8' (object, structured, string and datetime dtypes are refused)"
        )
    return np.dtype(dtype)


def _get(obj: Mapping[Any, Any], name: str) -> Any:
    """A field of an array map; openpi writes bytes keys, other encoders may write str keys."""
    if name.encode() in obj:
        return obj[name.encode()]
    if name in obj:
        return obj[name]
    raise DecodeError(f"array map lacks the field {name!r}")


def _pack(obj: Any) -> Any:
    """msgpack `default`: numpy arrays and scalars as maps, tuples as lists."""
    if isinstance(obj, np.ndarray | np.generic) and not _ALLOWED_DTYPE.match(obj.dtype.str):
        # refuse to send what the other side must refuse to read
        raise TypeError(
            f"cannot encode an array of dtype {obj.dtype}: only bool, int and float arrays travel"
        )
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode a {type(obj).__name__} as msgpack: {obj!r:.80}")


def _unpack(obj: dict[Any, Any]) -> Any:
    """msgpack `object_hook`: rebuild arrays and scalars, leave every other map alone."""
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        dtype = _check_dtype(_get(obj, "dtype"))
        data, shape = _get(obj, "data"), _get(obj, "shape")
        if not isinstance(data, bytes):
            raise DecodeError(f"array data must be bytes, got {type(data).__name__}")
        if (
            not isinstance(shape, list | tuple)
            or len(shape) > MAX_NDIM
            or not all(isinstance(size, int) and size >= 0 for size in shape)
        ):
            raise DecodeError(
                f"array shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r:.80}"
            )
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if len(data) != expected:
            raise DecodeError(
                f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}"
            )
        # A copy: frombuffer views the immutable message bytes, and consumers may write in place.
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        dtype = _check_dtype(_get(obj, "dtype"))
        item = _get(obj, "data")
        if not isinstance(item, bool | int | float):
            raise DecodeError(f"scalar data must be a number, got {item!r:.80}")
        try:
            return dtype.type(item)
        except (OverflowError, ValueError) as error:
            raise DecodeError(f"scalar {item!r} does not fit dtype {dtype.str}: {error}") from error
    return obj


def packb(obj: Any) -> bytes:
    """Encode containers, numbers, strings, bytes and numpy arrays/scalars as msgpack bytes."""
    # strict_types: numpy float64 scalars (a float subclass) keep their dtype via `_pack`.
    return msgpack.packb(obj, default=_pack, use_bin_type=True, strict_types=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack bytes; raises `DecodeError` (naming the problem) for anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected msgpack bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_unpack, raw=False, strict_map_key=False)
    except DecodeError:
        raise
    except Exception as error:  # FormatError, StackError, ExtraData, ValueError, UnicodeDecodeError
        raise DecodeError(
            f"not a valid msgpack message ({type(error).__name__}: {error})"
        ) from error
