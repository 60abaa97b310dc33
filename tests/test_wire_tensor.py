"""Wire tensors: checked on arrival, joined by bytes exactly as torch.cat joins the values."""

import pytest
import torch

from shared.tensors import from_wire, to_wire
from shared.wire_tensor import TensorDecodeError, WireTensor, concat_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_joined_chunks_are_the_concatenated_tensor(dtype):
    chunks = [(torch.randn(rows, 6) * 50).to(dtype) for rows in (3, 1, 4)]
    joined = concat_rows([to_wire(chunk) for chunk in chunks])
    assert joined == to_wire(torch.cat(chunks, dim=0))
    assert joined.num_rows == 8 and joined.nbytes == 8 * 6 * chunks[0].element_size()
    assert torch.equal(from_wire(joined), torch.cat(chunks, dim=0))


def test_message_round_trip_keeps_the_bytes():
    wire = to_wire(torch.arange(12, dtype=torch.float16).reshape(3, 4))
    assert WireTensor.from_message(wire.to_message()) == wire


def test_decoded_tensor_is_writable_and_independent_of_the_wire_bytes():
    wire = to_wire(torch.zeros(2, 2))
    tensor = from_wire(wire)
    tensor += 1
    assert torch.equal(from_wire(wire), torch.zeros(2, 2))


@pytest.mark.parametrize(
    "dtype, shape, size, message",
    [
        ("float64", (2,), 16, "unsupported tensor dtype"),
        ("float32", (-1, 2), 0, "negative tensor dimension"),
        ("float32", (4, 4), 63, "needs 64 bytes, got 63"),
    ],
)
def test_inconsistent_tensors_are_refused(dtype, shape, size, message):
    with pytest.raises(TensorDecodeError, match=message):
        WireTensor(dtype, shape, bytes(size))


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [WireTensor("float32", (2, 4), bytes(32)), WireTensor("float32", (2, 3), bytes(24))],
        [WireTensor("float32", (2, 4), bytes(32)), WireTensor("float16", (2, 4), bytes(16))],
        [WireTensor("float32", (), bytes(4))],
    ],
)
def test_chunks_that_do_not_line_up_are_refused(chunks):
    with pytest.raises(TensorDecodeError):
        concat_rows(chunks)


def test_a_tensor_in_log_lines_shows_no_bytes():
    assert "data" not in repr(WireTensor("int16", (2,), b"\x01\x00\x02\x00"))
