"""Tests for tests.synthetic_gguf: random-weight qwen3 GGUF files that llama.cpp runs."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tests.synthetic_gguf import (
    CHAT_TEMPLATE,
    QWEN3_0_6B,
    QWEN3_4B,
    SPECIAL_TOKENS,
    Qwen3Shape,
    minimal_vocab_size,
    write_qwen3_gguf,
)

CHATML_PROMPT = "<|im_start|>user\n你好，请问我的订单到哪里了？<|im_end|>\n<|im_start|>assistant\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen3_gguf(tmp_path_factory.mktemp("synthetic") / "tiny.gguf")


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Iterator[llama_cpp.Llama]:
    model = _load(model_path)
    yield model
    model.close()


@pytest.fixture(scope="module")
def special_ids(llm: llama_cpp.Llama) -> dict[str, int]:
    ids = {}
    for text, _ in SPECIAL_TOKENS:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert len(tokens) == 1, (text, tokens)
        ids[text] = tokens[0]
    return ids


# --- the file itself -------------------------------------------------------------------------------


def test_tiny_model_is_written_fast_and_deterministically(tmp_path: Path) -> None:
    start = time.perf_counter()
    first = write_qwen3_gguf(tmp_path / "a.gguf")
    elapsed = time.perf_counter() - start
    second = write_qwen3_gguf(tmp_path / "b.gguf")
    other_seed = write_qwen3_gguf(tmp_path / "c.gguf", seed=1)

    assert first == tmp_path / "a.gguf"
    assert elapsed < 3.0  # typically ~0.02 s; generous bound for slow CI machines
    assert first.stat().st_size < 1_000_000
    assert _sha256(first) == _sha256(second)
    assert _sha256(first) != _sha256(other_seed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]  # no temp files left


def test_tensors_match_the_qwen3_layout(model_path: Path) -> None:
    shape = Qwen3Shape()
    reader = gguf.GGUFReader(model_path)
    n_vocab = minimal_vocab_size()
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    e, ff = shape.n_embd, shape.n_ff

    # GGUF dims, i.e. ggml's ne[] order (the reverse of numpy's shape).
    expected: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (e, n_vocab),
        "output_norm.weight": (e,),
        "output.weight": (e, n_vocab),
    }
    for bid in range(shape.n_layer):
        expected |= {
            f"blk.{bid}.attn_norm.weight": (e,),
            f"blk.{bid}.attn_q.weight": (e, q_dim),
            f"blk.{bid}.attn_k.weight": (e, kv_dim),
            f"blk.{bid}.attn_v.weight": (e, kv_dim),
            f"blk.{bid}.attn_output.weight": (q_dim, e),
            f"blk.{bid}.attn_q_norm.weight": (shape.head_dim,),
            f"blk.{bid}.attn_k_norm.weight": (shape.head_dim,),
            f"blk.{bid}.ffn_norm.weight": (e,),
            f"blk.{bid}.ffn_gate.weight": (e, ff),
            f"blk.{bid}.ffn_up.weight": (e, ff),
            f"blk.{bid}.ffn_down.weight": (ff, e),
        }
    actual = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert actual == expected

    allowed = {gguf.TENSOR_NAMES[k] for k in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN3]}
    for tensor in reader.tensors:
        generic = ".".join("{bid}" if part.isdigit() else part for part in tensor.name.split("."))
        assert generic.removesuffix(".weight") in allowed
        data = np.asarray(tensor.data)
        if len(tensor.shape) == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            assert np.all(data == 1.0)
        else:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F16
            values = data.astype(np.float32)
            assert np.all(np.isfinite(values))
            assert 0.0 < float(values.std()) < 0.5
            assert abs(float(values.mean())) < 0.05


def test_metadata(model_path: Path) -> None:
    reader = gguf.GGUFReader(model_path)

    def value(key: str) -> object:
        field = reader.get_field(key)
        assert field is not None, key
        return field.contents()

    shape = Qwen3Shape()
    assert value("general.architecture") == "qwen3"
    assert value("general.name") == "kefu-tiny-qwen3"
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert value("qwen3.context_length") == shape.n_ctx_train
    assert value("qwen3.embedding_length") == shape.n_embd
    assert value("qwen3.block_count") == shape.n_layer
    assert value("qwen3.feed_forward_length") == shape.n_ff
    assert value("qwen3.attention.head_count") == shape.n_head
    assert value("qwen3.attention.head_count_kv") == shape.n_head_kv
    assert value("qwen3.attention.key_length") == shape.head_dim
    assert value("qwen3.attention.value_length") == shape.head_dim
    assert value("qwen3.rope.freq_base") == pytest.approx(shape.rope_theta)
    assert value("qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(shape.rms_eps)
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "qwen2"
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == CHAT_TEMPLATE

    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    merges = value("tokenizer.ggml.merges")
    assert isinstance(tokens, list) and isinstance(types, list) and isinstance(merges, list)
    assert len(tokens) == len(types) == minimal_vocab_size()
    assert len(set(tokens)) == len(tokens)
    assert 100 <= len(merges) <= 1000
    vocab = set(tokens)
    for merge in merges:  # llama.cpp needs both halves and the result in the vocabulary
        left, right = merge.split(" ")
        assert left in vocab and right in vocab and left + right in vocab, merge

    ids = {text: tokens.index(text) for text, _ in SPECIAL_TOKENS}
    for text, token_type in SPECIAL_TOKENS:
        assert types[ids[text]] == token_type
    assert types[ids["<|im_end|>"]] == gguf.TokenType.CONTROL
    assert types[ids["<think>"]] == gguf.TokenType.USER_DEFINED
    assert value("tokenizer.ggml.eos_token_id") == ids["<|im_end|>"]
    assert value("tokenizer.ggml.eot_token_id") == ids["<|im_end|>"]
    assert value("tokenizer.ggml.bos_token_id") == ids["<|endoftext|>"]
    assert value("tokenizer.ggml.padding_token_id") == ids["<|endoftext|>"]


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        write_qwen3_gguf(tmp_path / "x.gguf", vocab_size=10)
    with pytest.raises(ValueError, match="n_head_kv"):
        Qwen3Shape(n_head=4, n_head_kv=3)
    with pytest.raises(ValueError, match="n_layer"):
        Qwen3Shape(n_layer=0)
    assert not list(tmp_path.iterdir())


def test_benchmark_presets_have_the_real_shapes() -> None:
    small, big = QWEN3_0_6B, QWEN3_4B
    assert (small.n_layer, small.n_embd, small.n_head, small.n_head_kv) == (28, 1024, 16, 8)
    assert (small.head_dim, small.n_ff, small.n_ctx_train) == (128, 3072, 40960)
    assert (big.n_layer, big.n_embd, big.n_head, big.n_head_kv) == (36, 2560, 32, 8)
    assert (big.head_dim, big.n_ff, big.n_ctx_train) == (128, 9728, 40960)
    assert small.tie_embeddings and big.tie_embeddings  # as in the real checkpoints


# --- loading and running it with llama.cpp -----------------------------------------------------------


def test_llama_loads_it_with_qwen_special_tokens(llm: llama_cpp.Llama, special_ids: dict[str, int]) -> None:
    assert llm.metadata["general.architecture"] == "qwen3"
    assert llm.n_vocab() == minimal_vocab_size()
    assert llm.token_eos() == special_ids["<|im_end|>"]
    assert llm.token_bos() == special_ids["<|endoftext|>"]

    ids = llm.tokenize("<|im_start|>user\n你好<|im_end|>".encode(), add_bos=False, special=True)
    assert ids[0] == special_ids["<|im_start|>"]
    assert ids[-1] == special_ids["<|im_end|>"]
    assert ids.count(special_ids["<|im_start|>"]) == ids.count(special_ids["<|im_end|>"]) == 1
    assert llm.detokenize(ids, special=True).decode() == "<|im_start|>user\n你好<|im_end|>"
    # Without special parsing the control tokens are plain text.
    plain = llm.tokenize(b"<|im_start|>", add_bos=False, special=False)
    assert special_ids["<|im_start|>"] not in plain and len(plain) > 1


def test_think_tags_are_single_tokens(llm: llama_cpp.Llama, special_ids: dict[str, int]) -> None:
    for special in (True, False):  # user-defined tokens are matched either way, as for real Qwen3
        ids = llm.tokenize(b"<think>\nhmm\n</think>\n\nHello", add_bos=False, special=special)
        assert ids[0] == special_ids["<think>"]
        assert special_ids["</think>"] in ids
    # ... and they stay visible in generated text (control tokens do not).
    assert llm.detokenize([special_ids["<think>"]]) == b"<think>"
    assert llm.detokenize([special_ids["<|im_end|>"]]) == b""


def test_any_utf8_text_round_trips(llm: llama_cpp.Llama) -> None:
    text = "Hello, 世界! Ünïcödé ✓ 🙂 退款 12345\n\ttab"
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert llm.detokenize(ids).decode() == text
    # Common English words are single tokens thanks to the merges.
    assert len(llm.tokenize(b" the order", add_bos=False, special=False)) == 2


def test_completion_returns_text(llm: llama_cpp.Llama) -> None:
    out = llm.create_completion(CHATML_PROMPT, max_tokens=16, stop=["<|im_end|>"], temperature=0.0)
    assert isinstance(out, dict)
    choice = out["choices"][0]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("length", "stop")
    assert out["usage"]["completion_tokens"] >= 1


def test_streaming_matches_non_streaming(llm: llama_cpp.Llama) -> None:
    full = llm.create_completion(CHATML_PROMPT, max_tokens=16, stop=["<|im_end|>"], temperature=0.0)
    assert isinstance(full, dict)
    stream = llm.create_completion(
        CHATML_PROMPT, max_tokens=16, stop=["<|im_end|>"], temperature=0.0, stream=True
    )
    assert not isinstance(stream, dict)
    chunks = list(stream)
    assert len(chunks) >= 2
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_greedy_output_is_deterministic_across_loads(model_path: Path, tmp_path: Path) -> None:
    copy = write_qwen3_gguf(tmp_path / "same.gguf")  # same arguments: same file, loaded afresh
    texts = []
    for path in (model_path, copy):
        model = _load(path)
        try:
            out = model.create_completion("The customer said", max_tokens=24, temperature=0.0)
            assert isinstance(out, dict)
            texts.append((out["choices"][0]["text"], out["usage"]["completion_tokens"]))
        finally:
            model.close()
    assert texts[0] == texts[1]
    assert texts[0][1] >= 1


def test_chat_template(llm: llama_cpp.Llama) -> None:
    formatter = Jinja2ChatFormatter(template=CHAT_TEMPLATE, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\n您好！"},
        {"role": "user", "content": "Where is my order?"},
    ]
    history = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n您好！<|im_end|>\n"
        "<|im_start|>user\nWhere is my order?<|im_end|>\n"
    )
    thinking = formatter(messages=messages).prompt  # type: ignore[arg-type]
    assert thinking == history + "<|im_start|>assistant\n"
    direct = formatter(messages=messages, enable_thinking=False).prompt  # type: ignore[arg-type]
    assert direct == history + "<|im_start|>assistant\n<think>\n\n</think>\n\n"

    # llama-cpp-python picks the embedded template up by itself.
    response = llm.create_chat_completion(
        messages=[{"role": "user", "content": "你好"}], max_tokens=8, temperature=0.0
    )
    assert isinstance(response, dict)
    assert isinstance(response["choices"][0]["message"]["content"], str)


def test_larger_vocab_pads_with_filler_tokens(tmp_path: Path, special_ids: dict[str, int]) -> None:
    path = write_qwen3_gguf(tmp_path / "wide.gguf", vocab_size=4096)
    reader = gguf.GGUFReader(path)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert tuple(int(d) for d in embd.shape) == (Qwen3Shape().n_embd, 4096)
    model = _load(path)
    try:
        assert model.n_vocab() == 4096
        for text, token_id in special_ids.items():  # ids do not move when the vocabulary grows
            assert model.tokenize(text.encode(), add_bos=False, special=True) == [token_id]
        out = model.create_completion(CHATML_PROMPT, max_tokens=8, temperature=0.0)
        assert isinstance(out, dict) and out["usage"]["completion_tokens"] >= 1
    finally:
        model.close()


def test_tied_embeddings_load(tmp_path: Path) -> None:
    path = write_qwen3_gguf(tmp_path / "tied.gguf", dataclasses.replace(Qwen3Shape(), tie_embeddings=True))
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    model = _load(path)
    try:
        out = model.create_completion("Hello", max_tokens=4, temperature=0.0)
        assert isinstance(out, dict) and out["usage"]["completion_tokens"] >= 1
    finally:
        model.close()
