"""The NdArray codec: numpy arrays <-> ``core.NdArray`` (buffer, shape, dtype, compressed).

Conventions of the original clients: ``dtype`` is ``str(array.dtype)`` (``float32``, ``|S8``),
``buffer`` the C-order bytes, optionally one lz4 *frame* when ``compressed`` is set, and an
empty ``shape`` means an empty array. Decoding trusts nothing: the dtype must be a plain numeric
or fixed-width string type, the (decompressed) buffer must be exactly shape x itemsize bytes, and
decompression stops at that size so a small message cannot inflate into gigabytes.
"""

from __future__ import annotations

import math

import lz4.frame
import numpy as np

from lakestack_common.errors import InvalidArgument
from lakestack_protos.core.core_pb2 import NdArray

# b: bool, i/u: integers, f: floats, S/U: fixed-width byte/unicode strings (ids).
ALLOWED_KINDS = frozenset("biufSU")
DEFAULT_MAX_BYTES = 1 << 30


class NdArrayError(InvalidArgument):
    """An NdArray message that cannot be decoded (or an array that cannot be encoded)."""


def parse_dtype(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise NdArrayError(f"unknown NdArray dtype {name!r}") from exc
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in ALLOWED_KINDS:
        raise NdArrayError(f"unsupported NdArray dtype {name!r}: use a numeric or fixed-width string type")
    if dtype.itemsize == 0:
        raise NdArrayError(f"NdArray dtype {name!r} has zero width")
    return dtype


def encode(array: np.ndarray, *, compress: bool = False) -> NdArray:
    """Encode ``array`` (C order); ``compress`` wraps the bytes in one lz4 frame."""
    array = np.asarray(array)
    if array.ndim == 0:
        raise NdArrayError("cannot encode a 0-d array: an empty shape means an empty array")
    parse_dtype(str(array.dtype))
    data = np.ascontiguousarray(array).tobytes()
    if compress:
        data = lz4.frame.compress(data)
    return NdArray(buffer=data, shape=list(array.shape), dtype=str(array.dtype), compressed=compress)


def _decompress(buffer: bytes, expected: int) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        data = decompressor.decompress(buffer, max_length=expected)
    except RuntimeError as exc:
        raise NdArrayError(f"corrupt lz4 NdArray buffer: {exc}") from exc
    if len(data) != expected or not decompressor.eof:
        raise NdArrayError(
            f"lz4 NdArray buffer does not decompress to the {expected} bytes its shape and dtype need"
        )
    if decompressor.unused_data:
        raise NdArrayError("lz4 NdArray buffer has trailing bytes after its frame")
    return data


def decode(message: NdArray, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode an NdArray message; raises :class:`NdArrayError` (INVALID_ARGUMENT) on bad input."""
    dtype = parse_dtype(message.dtype)
    shape = tuple(int(d) for d in message.shape)
    if not shape:
        if message.buffer and not message.compressed:
            raise NdArrayError("NdArray with an empty shape must have an empty buffer")
        return np.empty((0,), dtype=dtype)
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise NdArrayError(
            f"NdArray of shape {list(shape)} and dtype {dtype} needs {expected} bytes; limit is {max_bytes}"
        )
    data = _decompress(message.buffer, expected) if message.compressed else message.buffer
    if len(data) != expected:
        raise NdArrayError(
            f"NdArray buffer has {len(data)} bytes but shape {list(shape)} of {dtype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
