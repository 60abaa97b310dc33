"""The orchestrator's handling of embedding rows as wire tensors: joined from encoder chunks, refused
when malformed, and cached by their byte size."""

import pytest

from services.orchestrator.backends import BackendError
from services.orchestrator.grpc_backends import embedding_rows
from services.orchestrator.media import EmbeddingCache
from shared.wire_tensor import WireTensor


def rows(n: int, hidden: int = 4, fill: int = 0) -> WireTensor:
    return WireTensor("float32", (n, hidden), bytes([fill]) * (n * hidden * 4))


def test_encoder_chunks_become_one_row_tensor():
    joined = embedding_rows("vision", rows(2, fill=1).to_message(), rows(3, fill=2).to_message())
    assert joined == WireTensor("float32", (5, 4), bytes([1]) * 32 + bytes([2]) * 48)


@pytest.mark.parametrize("messages", [(), (WireTensor("float32", (2, 4), bytes(32)).to_message(),)])
def test_missing_or_malformed_embeddings_are_an_internal_error(messages):
    if messages:
        messages[0].data = messages[0].data[:-1]
    with pytest.raises(BackendError) as caught:
        embedding_rows("vision", *messages)
    assert caught.value.code == "INTERNAL" and "vision" in caught.value.message


def test_cache_evicts_the_oldest_rows_past_its_byte_bound():
    cache = EmbeddingCache(max_bytes=3 * 16)  # three rows of 4 float32
    cache.put("a", rows(1))
    cache.put("b", rows(1))
    cache.put("a", rows(1))  # replacing an entry does not count it twice
    cache.put("c", rows(1))
    cache.get("a")  # used: "b" is now the oldest
    cache.put("d", rows(1))
    assert [key for key in "abcd" if cache.get(key) is not None] == ["a", "c", "d"]
    cache.put("huge", rows(4))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None and cache.get("a") is not None
