import filecmp
import sys
from pathlib import Path

import pytest
import torch

from services.orchestrator.auth import LOCAL_TENANT, ApiKeys
from shared.tensors import TensorDecodeError, from_proto, to_proto
from shared.tokenizer import QwenTokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int16, torch.int64])
def test_tensor_round_trip_is_exact(dtype):
    tensor = (torch.randn(3, 5) * 100).to(dtype)
    back = from_proto(to_proto(tensor))
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_tensor_with_wrong_byte_count_is_refused():
    message = to_proto(torch.zeros(4, 4))
    message.data = message.data[:-1]
    with pytest.raises(TensorDecodeError, match="needs 64 bytes"):
        from_proto(message)


def test_tokenizer_ids_match_the_spec():
    tok = QwenTokenizer.from_dir()
    s = tok.special
    assert (s.im_start, s.im_end, s.end_of_text) == (151644, 151645, 151643)
    assert (s.state_audio_reply, s.state_text_reply, s.state_not_addressed) == (144766, 145789, 146164)
    assert tok.encode_text("<|im_start|>") != [151644]


def test_incremental_decoder_never_splits_a_character():
    tok = QwenTokenizer.from_dir()
    text = "héllo 世界 ☞ done"
    decoder = tok.incremental_decoder()
    pieces = [decoder.push(i) for i in tok.encode_text(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_incremental_decoder_keeps_special_tokens_and_ends_an_unfinished_character_as_u_fffd():
    tok = QwenTokenizer.from_dir()
    decoder = tok.incremental_decoder()
    ids = [tok.special.state_text_reply, tok.special.im_start, *tok.encode_text("ok 𝄞")]
    pieces = [decoder.push(i) for i in ids[:-1]]  # the reply stops one byte short of 𝄞
    assert "".join(pieces) == "☜<|im_start|>ok"
    assert decoder.flush() == tok.decode(ids[:-1])[len("☜<|im_start|>ok"):] == " \ufffd"


def test_incremental_decoder_work_per_token_does_not_grow_with_the_reply(monkeypatch):
    """Work is counted, not timed: the ids a push decodes again. The old decoder re-decoded the whole
    reply on every token (O(n) each, O(n²) a turn); now only the ids of an unfinished character wait,
    and the reply itself is never decoded again."""
    tok = QwenTokenizer.from_dir()
    text = "héllo 世界 ☞ 🦜 𝄞 done. " * 300
    ids = tok.encode_text(text)
    decoded_again = []
    monkeypatch.setattr(QwenTokenizer, "decode", lambda self, ids, **_: decoded_again.append(len(ids)))
    decoder = tok.incremental_decoder()
    pieces, held = [], []
    for token_id in ids:
        pieces.append(decoder.push(token_id))
        held.append(len(decoder._held))
    assert len(ids) > 3000
    assert decoded_again == []
    assert max(held) <= 4  # at most the bytes of one UTF-8 character
    assert "".join(pieces) + decoder.flush() == text


def test_api_keys_map_to_tenants():
    keys = ApiKeys("k1=alpha, k2=beta")
    assert keys.tenant_for((("authorization", "Bearer k2"),)) == "beta"
    assert keys.tenant_for((("authorization", "Bearer nope"),)) is None
    assert keys.tenant_for(()) is None
    assert ApiKeys("").tenant_for(()) == LOCAL_TENANT
    with pytest.raises(ValueError):
        ApiKeys("no-tenant")


def test_committed_protobuf_stubs_match_the_protos(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_protos import generate
    finally:
        sys.path.pop(0)
    sources = generate(tmp_path)
    for source in sources:
        relative = source.relative_to(ROOT / "protos").with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated = tmp_path / f"{relative}{suffix}"
            committed = ROOT / "protos" / f"{relative}{suffix}"
            assert committed.exists(), f"{committed} missing: run python scripts/gen_protos.py"
            assert filecmp.cmp(generated, committed, shallow=False), f"{committed} is stale: run python scripts/gen_protos.py"
