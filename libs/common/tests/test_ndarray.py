import lz4.frame
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lakestack_common.ndarray import NdArrayError, decode, encode
from lakestack_protos.core.core_pb2 import NdArray

DTYPES = ["float32", "float16", "float64", "int8", "int32", "int64", "uint16", "uint64", "bool", "S12", "U4"]


@settings(max_examples=150, deadline=None)
@given(
    array=st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            dtype=np.dtype(dtype), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=7)
        )
    ),
    compress=st.booleans(),
)
def test_round_trip_any_dtype_and_shape(array: np.ndarray, compress: bool) -> None:
    message = NdArray.FromString(encode(array, compress=compress).SerializeToString())
    assert message.compressed is compress
    assert list(message.shape) == list(array.shape)
    decoded = decode(message)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_wire_fields_follow_client_conventions() -> None:
    array = np.arange(6, dtype="float32").reshape(2, 3)
    message = encode(array)
    assert message.dtype == "float32"
    assert message.buffer == array.tobytes()
    compressed = encode(array, compress=True)
    assert lz4.frame.decompress(compressed.buffer) == array.tobytes()


def test_empty_shape_means_empty_array() -> None:
    decoded = decode(NdArray(dtype="float32"))
    assert decoded.shape == (0,)
    assert decoded.dtype == np.float32


def test_non_contiguous_input_is_encoded_in_c_order() -> None:
    array = np.arange(12, dtype="int32").reshape(3, 4).T
    np.testing.assert_array_equal(decode(encode(array)), array)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (NdArray(buffer=b"\x00" * 8, shape=[2], dtype="float64"), "needs 16"),
        (NdArray(buffer=b"\x00" * 12, shape=[2], dtype="float32"), "needs 8"),
        (NdArray(buffer=b"\x00" * 8, shape=[2], dtype="object"), "unsupported"),
        (NdArray(buffer=b"\x00" * 8, shape=[2], dtype="not-a-dtype"), "unknown"),
        (NdArray(buffer=b"\x00" * 8, shape=[1], dtype="f4,i4"), "unsupported"),
        (NdArray(buffer=b"\x00" * 8, shape=[1], dtype="S0"), "zero width"),
        (NdArray(buffer=b"garbage, not lz4", shape=[2], dtype="float32", compressed=True), "lz4"),
        (NdArray(buffer=b"\x00\x01", dtype="float32"), "empty shape"),
    ],
)
def test_rejects_inconsistent_or_corrupt_buffers(message: NdArray, reason: str) -> None:
    with pytest.raises(NdArrayError, match=reason):
        decode(message)


def test_rejects_lz4_frame_of_the_wrong_size() -> None:
    frame = lz4.frame.compress(np.zeros(3, dtype="float32").tobytes())
    with pytest.raises(NdArrayError, match="does not decompress"):
        decode(NdArray(buffer=frame, shape=[4], dtype="float32", compressed=True))
    with pytest.raises(NdArrayError):
        decode(NdArray(buffer=frame, shape=[2], dtype="float32", compressed=True))


def test_rejects_trailing_bytes_after_frame() -> None:
    frame = lz4.frame.compress(np.zeros(2, dtype="float32").tobytes())
    with pytest.raises(NdArrayError, match="trailing"):
        decode(NdArray(buffer=frame + b"xx", shape=[2], dtype="float32", compressed=True))


def test_size_limit_stops_decompression_bombs() -> None:
    bomb = lz4.frame.compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    with pytest.raises(NdArrayError, match="limit"):
        decode(
            NdArray(buffer=bomb, shape=[16 * 1024 * 1024], dtype="float32", compressed=True),
            max_bytes=1 << 20,
        )


def test_zero_dimensional_arrays_are_refused() -> None:
    with pytest.raises(NdArrayError, match="0-d"):
        encode(np.float32(1.0))


def test_codec_errors_are_invalid_argument() -> None:
    import grpc

    assert NdArrayError("x").code is grpc.StatusCode.INVALID_ARGUMENT
