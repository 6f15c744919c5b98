"""Synthetic random-weight GGUF models of the real ``qwen3`` architecture.

This module writes small (or benchmark-sized) GGUF files that llama.cpp, and
therefore ``llama_cpp.Llama``, loads and generates from without any real
weights having to be downloaded. It is meant for tests and benchmarks only:
the weights are random, so generated text is gibberish.

Guarantees of :func:`write_qwen3_gguf`:

* ``general.architecture`` is ``qwen3`` and the tensors carry the names and
  shapes that llama.cpp's qwen3 loader expects (``token_embd``,
  ``output_norm``, ``output`` unless embeddings are tied, and per block
  ``attn_norm``, ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``,
  ``attn_q_norm``, ``attn_k_norm``, ``ffn_norm``, ``ffn_gate``, ``ffn_up``,
  ``ffn_down``). Norm weights are float32 ones; matrices are float16 values
  drawn from a normal distribution with std ``1/sqrt(fan_in)`` (0.02 for the
  token embedding), so ``general.file_type`` is ``MOSTLY_F16``.
* The file is a pure function of ``(shape, vocab_size, seed, name)``: the
  same arguments always produce byte-identical files (for a given NumPy
  version; NumPy does not promise its random streams across releases).
* An embedded byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``,
  ``tokenizer.ggml.pre = "qwen2"``) covers all 256 bytes, so any UTF-8 text,
  Chinese included, tokenizes. A few hundred merges learned from a small
  built-in English/Chinese corpus make common words single tokens.
* Qwen special tokens: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` are
  CONTROL tokens; ``<think>`` and ``</think>`` are USER_DEFINED tokens, as in
  the GGUFs converted from the real Qwen3 checkpoints, so they are always
  tokenized as single tokens and are rendered in generated text.
  EOS and EOT are ``<|im_end|>``; BOS and padding are ``<|endoftext|>``, and
  no BOS is added. Token ids of the base vocabulary and the special tokens do
  not depend on ``vocab_size``; a larger ``vocab_size`` only appends filler
  tokens.
* ``tokenizer.chat_template`` is a ChatML template that honours
  ``add_generation_prompt`` and ``enable_thinking=False`` (an empty
  ``<think>`` block is then pre-filled, as Qwen3's own template does).
* Tensor data is generated (on a few threads) and written in 8 MiB chunks,
  so extra memory stays around 20 MiB per CPU core (at most 8 are used) even
  for real-size shapes such as :data:`QWEN3_4B` with a 151936-token
  vocabulary. The file appears atomically at ``path`` (written under a
  temporary name in the same directory, then renamed).

:func:`write_llama_gguf` writes the same kind of tiny model with ``general.architecture`` ``llama`` (no q/k
norms), Llama-3 special tokens (``<|begin_of_text|>``, ``<|end_of_text|>``, ``<|start_header_id|>``,
``<|end_header_id|>``, ``<|eot_id|>``: CONTROL tokens; BOS ``<|begin_of_text|>``, EOS ``<|end_of_text|>``, EOT
``<|eot_id|>``) and Llama 3's own chat template (:data:`LLAMA3_CHAT_TEMPLATE`), or another template or none: a
model that is not a Qwen3, for the code that prompts with a GGUF's own template.

Importing this module performs no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import threading
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Final

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "CHAT_TEMPLATE",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "QWEN3_0_6B",
    "QWEN3_4B",
    "QWEN3_REAL_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "Qwen3Shape",
    "minimal_vocab_size",
    "write_llama_gguf",
    "write_qwen3_gguf",
]


@dataclass(frozen=True)
class Qwen3Shape:
    """Hyper-parameters of a qwen3 model; the defaults describe a tiny test model.

    ``tie_embeddings`` = True omits the ``output`` tensor, so llama.cpp reuses
    ``token_embd`` for the LM head (as the real 0.6B-4B Qwen3 checkpoints do).
    """

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 128
    n_ctx_train: int = 4096
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for field_name in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx_train"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Qwen3Shape.{field_name} must be a positive int, got {value!r}")
        if self.n_head % self.n_head_kv != 0:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_eps <= 0:
            raise ValueError("rope_theta and rms_eps must be positive")


# Shapes of the real checkpoints (the vocabulary is set via ``vocab_size``).
# Both real models tie the LM head to the token embedding.
QWEN3_0_6B: Final[Qwen3Shape] = Qwen3Shape(
    n_layer=28,
    n_embd=1024,
    n_head=16,
    n_head_kv=8,
    head_dim=128,
    n_ff=3072,
    n_ctx_train=40960,
    tie_embeddings=True,
)
QWEN3_4B: Final[Qwen3Shape] = Qwen3Shape(
    n_layer=36,
    n_embd=2560,
    n_head=32,
    n_head_kv=8,
    head_dim=128,
    n_ff=9728,
    n_ctx_train=40960,
    tie_embeddings=True,
)

# Rows of the embedding / LM-head matrices in the real Qwen3 checkpoints.
QWEN3_REAL_VOCAB_SIZE: Final[int] = 151936

# (text, token type). Order fixes the ids right after the BPE vocabulary.
SPECIAL_TOKENS: Final[tuple[tuple[str, gguf.TokenType], ...]] = (
    ("<|endoftext|>", gguf.TokenType.CONTROL),
    ("<|im_start|>", gguf.TokenType.CONTROL),
    ("<|im_end|>", gguf.TokenType.CONTROL),
    ("<think>", gguf.TokenType.USER_DEFINED),
    ("</think>", gguf.TokenType.USER_DEFINED),
)

# ChatML in Qwen3's flavour. Assistant turns in the history lose their
# reasoning block; with enable_thinking=false the generation prompt carries an
# empty think block so the model answers directly.
CHAT_TEMPLATE: Final[str] = r"""{%- for message in messages -%}
    {%- set content = message['content'] if message['content'] is string else '' -%}
    {%- if message['role'] == 'assistant' and '</think>' in content -%}
        {%- set content = content.split('</think>')[-1].lstrip('\n') -%}
    {%- endif -%}
    {{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\n\n</think>\n\n' -}}
    {%- endif -%}
{%- endif -%}"""

# Llama 3's special tokens (their ids follow the BPE vocabulary, in this order).
LLAMA3_SPECIAL_TOKENS: Final[tuple[tuple[str, gguf.TokenType], ...]] = (
    ("<|begin_of_text|>", gguf.TokenType.CONTROL),
    ("<|end_of_text|>", gguf.TokenType.CONTROL),
    ("<|start_header_id|>", gguf.TokenType.CONTROL),
    ("<|end_header_id|>", gguf.TokenType.CONTROL),
    ("<|eot_id|>", gguf.TokenType.CONTROL),
)

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, as published (content trimmed, BOS first).
LLAMA3_CHAT_TEMPLATE: Final[str] = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Small corpus the BPE merges are learned from: customer-service style
# English and Chinese, plus a little code and JSON punctuation.
_CORPUS: Final[str] = """\
Hello! Thank you for contacting customer support. How can I help you today?
I would like to check the status of my order. The order number is 12345.
Sure, let me look that up for you. Your order was shipped yesterday and it
should arrive within three to five business days. You can track the package
with the tracking number in the confirmation email we sent to you.
Can I change the delivery address? I am not at home this week.
Yes, you can change the address before the package is out for delivery.
Please tell me the new address and I will update it for you right away.
What is your return policy? The product does not work and I want a refund.
I am sorry to hear that. You can return any item within thirty days of
purchase. We will send you a prepaid return label by email, and the refund
will be issued to your original payment method after we receive the item.
Is there anything else I can help you with? No, that is all. Thank you!
You are welcome. Have a great day, and thank you for shopping with us.
The user asked a question about the price, the account, the password and
the payment. We should answer the question in a clear and friendly way.
Let me think about this step by step. First, the customer wants to know
when the order will arrive. Then, they want to know how to get a refund.
def answer(question: str) -> str:
    return "Thank you for your question."
{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}
你好，请问有什么可以帮您？我想查询一下我的订单。好的，请提供您的订单号。
您的订单已经发货了，预计三到五天送达。请问还有其他问题吗？没有了，谢谢！
我想申请退款，这个商品有质量问题。非常抱歉给您带来不便，我们马上为您处理。
感谢您的耐心等待，祝您生活愉快！客服很高兴为您服务。
你好，我的订单什么时候到？你好，请问可以退货吗？谢谢你的帮助。
请问您需要什么帮助？我们会尽快为您处理订单问题，谢谢您的支持。
"""

_MAX_MERGES: Final[int] = 400
_MIN_PAIR_COUNT: Final[int] = 2

# Approximation of the "qwen2" pre-tokenizer regex with Python's ``re``:
# contractions, letter runs with one optional leading non-letter, single
# digits, punctuation runs, newlines and other whitespace.
_PRETOKENIZE: Final[re.Pattern[str]] = re.compile(
    r"'(?i:[sdmt]|ll|ve|re)|(?:[^\r\n\w]|_)?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Tensor data is produced in chunks of this many elements (8 MiB of f16).
_CHUNK_ELEMS: Final[int] = 1 << 22
_EMBEDDING_STD: Final[float] = 0.02


@lru_cache(maxsize=1)
def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the
    others to code points from 256 upward, so every byte is a visible char."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    printable_set = set(printable)
    table: list[str] = []
    extra = 0
    for byte in range(256):
        if byte in printable_set:
            table.append(chr(byte))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return tuple(table)


def _to_byte_level(text: str) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def _pairs(symbols: Sequence[str]) -> Iterator[tuple[str, str]]:
    return itertools.pairwise(symbols)


@lru_cache(maxsize=1)
def _learn_merges() -> tuple[tuple[str, str], ...]:
    """Learn up to ``_MAX_MERGES`` BPE merges from ``_CORPUS``.

    Standard BPE training: repeatedly merge the most frequent adjacent pair
    (ties broken by the pair's text, so the result is deterministic). Pair
    counts are updated incrementally and the best pair is found through a
    lazily invalidated heap, which keeps this to a few milliseconds.
    """
    counts = Counter(_to_byte_level(piece) for piece in _PRETOKENIZE.findall(_CORPUS))
    words: list[list[str]] = []
    freqs: list[int] = []
    for word, freq in counts.items():
        if len(word) > 1:
            words.append(list(word))
            freqs.append(freq)

    pair_count: Counter[tuple[str, str]] = Counter()
    pair_words: dict[tuple[str, str], set[int]] = {}
    for idx, (symbols, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in _pairs(symbols):
            pair_count[pair] += freq
            pair_words.setdefault(pair, set()).add(idx)
    heap = [(-count, pair) for pair, count in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap and len(merges) < _MAX_MERGES:
        neg_count, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count:
            continue  # stale heap entry
        if -neg_count < _MIN_PAIR_COUNT:
            break
        merges.append(pair)
        left, right = pair
        merged = left + right
        touched: set[tuple[str, str]] = set()
        for idx in sorted(pair_words.pop(pair, ())):
            symbols, freq = words[idx], freqs[idx]
            new_symbols: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    new_symbols.append(merged)
                    i += 2
                else:
                    new_symbols.append(symbols[i])
                    i += 1
            if len(new_symbols) == len(symbols):
                continue  # the pair had already disappeared from this word
            for old in _pairs(symbols):
                pair_count[old] -= freq
                touched.add(old)
            for new in _pairs(new_symbols):
                pair_count[new] += freq
                pair_words.setdefault(new, set()).add(idx)
                touched.add(new)
            words[idx] = new_symbols
        pair_count.pop(pair, None)
        for changed in sorted(touched):
            count = pair_count.get(changed, 0)
            if count > 0 and changed != pair:
                heapq.heappush(heap, (-count, changed))
    return tuple(merges)


@lru_cache(maxsize=1)
def _base_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Tokens (256 byte tokens, then merge results) and merges as "a b" strings."""
    tokens = list(_byte_to_unicode())
    seen = set(tokens)
    merge_lines: list[str] = []
    for left, right in _learn_merges():
        merged = left + right
        if merged not in seen:  # different merge paths may yield the same text
            seen.add(merged)
            tokens.append(merged)
        merge_lines.append(f"{left} {right}")
    return tuple(tokens), tuple(merge_lines)


def minimal_vocab_size() -> int:
    """Vocabulary size used when ``write_qwen3_gguf`` gets ``vocab_size=None``."""
    return len(_base_vocab()[0]) + len(SPECIAL_TOKENS)


def _filler_tokens(count: int, taken: set[str]) -> list[str]:
    """``count`` distinct pseudo-words (" ab", " ac", ...) not in ``taken``.

    They are NORMAL tokens that no merge produces, so they never appear when
    tokenizing, but when a random model samples them they decode to visible
    text, which keeps streamed output of large-vocab models non-empty.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    space = _byte_to_unicode()[ord(" ")]
    out: list[str] = []
    length = 2
    while len(out) < count:
        for number in range(len(letters) ** length):
            chars = []
            for _ in range(length):
                number, digit = divmod(number, len(letters))
                chars.append(letters[digit])
            token = space + "".join(reversed(chars))
            if token not in taken:
                out.append(token)
                if len(out) == count:
                    break
        length += 1
    return out


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest dim first); GGUF stores it reversed
    std: float | None  # None: a norm weight (float32 ones)

    @property
    def n_elems(self) -> int:
        return int(np.prod(self.shape))

    @property
    def dtype(self) -> np.dtype[np.float16] | np.dtype[np.float32]:
        return np.dtype(np.float32) if self.std is None else np.dtype(np.float16)

    @property
    def nbytes(self) -> int:
        return self.n_elems * self.dtype.itemsize


def _tensor_specs(shape: Qwen3Shape, n_vocab: int, arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.QWEN3) -> list[_TensorSpec]:
    names = gguf.TENSOR_NAMES
    t = gguf.MODEL_TENSOR
    q_dim = shape.n_head * shape.head_dim
    kv_dim = shape.n_head_kv * shape.head_dim
    e, ff = shape.n_embd, shape.n_ff

    def matrix(
        key: gguf.MODEL_TENSOR, rows: int, cols: int, bid: int | None = None, std: float | None = None
    ) -> _TensorSpec:
        # A linear layer y = W x with W of numpy shape (out, in): GGUF dims are
        # (in, out), which is what llama.cpp's loader checks.
        base = names[key] if bid is None else names[key].format(bid=bid)
        return _TensorSpec(f"{base}.weight", (rows, cols), std if std is not None else cols**-0.5)

    def norm(key: gguf.MODEL_TENSOR, size: int, bid: int | None = None) -> _TensorSpec:
        base = names[key] if bid is None else names[key].format(bid=bid)
        return _TensorSpec(f"{base}.weight", (size,), None)

    specs = [matrix(t.TOKEN_EMBD, n_vocab, e, std=_EMBEDDING_STD)]
    for bid in range(shape.n_layer):
        specs += [
            norm(t.ATTN_NORM, e, bid),
            matrix(t.ATTN_Q, q_dim, e, bid),
            matrix(t.ATTN_K, kv_dim, e, bid),
            matrix(t.ATTN_V, kv_dim, e, bid),
            matrix(t.ATTN_OUT, e, q_dim, bid),
            *([norm(t.ATTN_Q_NORM, shape.head_dim, bid), norm(t.ATTN_K_NORM, shape.head_dim, bid)]
              if arch == gguf.MODEL_ARCH.QWEN3 else []),
            norm(t.FFN_NORM, e, bid),
            matrix(t.FFN_GATE, ff, e, bid),
            matrix(t.FFN_UP, ff, e, bid),
            matrix(t.FFN_DOWN, e, ff, bid),
        ]
    specs.append(norm(t.OUTPUT_NORM, e))
    if not shape.tie_embeddings:
        specs.append(matrix(t.OUTPUT, n_vocab, e))

    allowed = {names[k] for k in gguf.MODEL_TENSORS[arch]}
    for spec in specs:  # guard against typos: every name must belong to the architecture
        assert re.sub(r"\.\d+\.", ".{bid}.", spec.name).removesuffix(".weight") in allowed, spec.name
    return specs


def _normal_table(seed: int, std: float) -> npt.NDArray[np.float16]:
    """65536 float16 samples of N(0, std^2), indexed by random uint16 values.

    Drawing float16 normals directly costs ~35 ns/element here; picking from a
    seeded table costs ~2 ns, which is what makes multi-GB files take seconds.
    Each element is still marginally N(0, std^2) (to float16 precision).
    """
    rng = np.random.default_rng([seed, 0x7AB1E])
    return (rng.standard_normal(1 << 16, dtype=np.float32) * np.float32(std)).astype(np.float16)


def _random_chunk(
    table: npt.NDArray[np.float16], seed: int, tensor_key: int, chunk: int, n: int
) -> npt.NDArray[np.float16]:
    # Every chunk has its own seeded stream, so the bytes do not depend on the
    # thread schedule, on the other tensors or on the vocabulary size.
    rng = np.random.default_rng([seed, tensor_key, chunk])
    return table[rng.integers(0, 1 << 16, size=n, dtype=np.uint16)]


def _write_tensor_data(fout: BinaryIO, specs: Sequence[_TensorSpec], seed: int, align: int) -> None:
    """Write the data section: every tensor padded to ``align`` bytes.

    Random chunks are produced by a small thread pool (NumPy releases the GIL
    while filling and gathering) and written in order by this thread, keeping
    at most a few chunks in memory.
    """
    tables: dict[float, npt.NDArray[np.float16]] = {}
    workers = max(1, min(8, os.cpu_count() or 1))
    pending: deque[Future[npt.NDArray[np.float16]] | bytes] = deque()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            item = pending.popleft()
            data = item if isinstance(item, bytes) else item.result().data
            fout.write(data)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic-gguf") as pool:
        for spec in specs:
            if spec.std is None:
                pending.append(np.ones(spec.n_elems, dtype=np.float32).tobytes())
            else:
                table = tables.get(spec.std)
                if table is None:
                    table = tables[spec.std] = _normal_table(seed, spec.std)
                key = zlib.crc32(spec.name.encode())
                for chunk, start in enumerate(range(0, spec.n_elems, _CHUNK_ELEMS)):
                    n = min(_CHUNK_ELEMS, spec.n_elems - start)
                    pending.append(pool.submit(_random_chunk, table, seed, key, chunk, n))
                    drain(2 * workers)
            pad = -spec.nbytes % align
            if pad:
                pending.append(bytes(pad))
        drain(0)


def write_qwen3_gguf(
    path: Path,
    shape: Qwen3Shape = Qwen3Shape(),
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    name: str = "kefu-tiny-qwen3",
    pooling_type: int | None = None,
) -> Path:
    """Write a random-weight qwen3 GGUF model to ``path`` and return ``path``.

    ``vocab_size=None`` uses the minimal vocabulary (byte tokens, learned
    merges and the special tokens; see :func:`minimal_vocab_size`). A larger
    value appends filler tokens so the embedding and LM-head matrices have that
    many rows (e.g. :data:`QWEN3_REAL_VOCAB_SIZE` for realistic benchmarks).
    ``seed`` determines all weights; the output is deterministic.
    ``pooling_type`` (a ``gguf.PoolingType`` value, e.g. 3 for last-token) writes ``qwen3.pooling_type``, as the
    GGUFs converted from Qwen3-Embedding carry it; None writes none, as a chat model's.
    """
    return _write_gguf(path, shape, gguf.MODEL_ARCH.QWEN3, SPECIAL_TOKENS, vocab_size=vocab_size, seed=seed, name=name,
                       pooling_type=pooling_type, pre="qwen2", bos="<|endoftext|>", eos="<|im_end|>", eot="<|im_end|>",
                       pad="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def write_llama_gguf(
    path: Path,
    shape: Qwen3Shape = Qwen3Shape(),
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    name: str = "kefu-tiny-llama",
    chat_template: str | None = LLAMA3_CHAT_TEMPLATE,
    add_bos: bool = False,
) -> Path:
    """Write a random-weight ``llama`` GGUF with Llama 3's special tokens and ``chat_template`` (None: no template
    in the file) to ``path``; ``add_bos`` writes ``tokenizer.ggml.add_bos_token`` true. Deterministic like
    :func:`write_qwen3_gguf`; the shape's ``head_dim`` must be ``n_embd / n_head`` (llama.cpp derives it)."""
    if shape.head_dim * shape.n_head != shape.n_embd:
        raise ValueError("a llama model's head_dim must be n_embd / n_head")
    return _write_gguf(path, shape, gguf.MODEL_ARCH.LLAMA, LLAMA3_SPECIAL_TOKENS, vocab_size=vocab_size, seed=seed,
                       name=name, pooling_type=None, pre="llama-bpe", bos="<|begin_of_text|>", eos="<|end_of_text|>",
                       eot="<|eot_id|>", pad="<|end_of_text|>", chat_template=chat_template, add_bos=add_bos)


def _write_gguf(
    path: Path,
    shape: Qwen3Shape,
    arch_id: gguf.MODEL_ARCH,
    special_tokens: Sequence[tuple[str, gguf.TokenType]],
    *,
    vocab_size: int | None,
    seed: int,
    name: str,
    pooling_type: int | None,
    pre: str,
    bos: str,
    eos: str,
    eot: str,
    pad: str,
    chat_template: str | None,
    add_bos: bool = False,
) -> Path:
    path = Path(path)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    base_tokens, merges = _base_vocab()
    tokens = list(base_tokens)
    token_types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    special_ids: dict[str, int] = {}
    for text, token_type in special_tokens:
        special_ids[text] = len(tokens)
        tokens.append(text)
        token_types.append(int(token_type))
    if vocab_size is not None:
        if vocab_size < len(tokens):
            raise ValueError(f"vocab_size must be at least {len(tokens)}, got {vocab_size}")
        fillers = _filler_tokens(vocab_size - len(tokens), set(tokens))
        tokens += fillers
        token_types += [int(gguf.TokenType.NORMAL)] * len(fillers)
    n_vocab = len(tokens)

    specs = _tensor_specs(shape, n_vocab, arch_id)
    arch = gguf.MODEL_ARCH_NAMES[arch_id]
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    writer = gguf.GGUFWriter(tmp_path, arch=arch)
    try:
        writer.add_name(name)
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
        writer.add_context_length(shape.n_ctx_train)
        writer.add_embedding_length(shape.n_embd)
        writer.add_block_count(shape.n_layer)
        writer.add_feed_forward_length(shape.n_ff)
        writer.add_head_count(shape.n_head)
        writer.add_head_count_kv(shape.n_head_kv)
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
        writer.add_rope_freq_base(shape.rope_theta)
        writer.add_layer_norm_rms_eps(shape.rms_eps)
        writer.add_vocab_size(n_vocab)
        if pooling_type is not None:
            writer.add_pooling_type(gguf.PoolingType(pooling_type))

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(list(merges))
        writer.add_bos_token_id(special_ids[bos])
        writer.add_eos_token_id(special_ids[eos])
        writer.add_eot_token_id(special_ids[eot])
        writer.add_pad_token_id(special_ids[pad])
        writer.add_add_bos_token(add_bos)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

        for spec in specs:
            writer.add_tensor_info(spec.name, spec.shape, spec.dtype, spec.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()

        # Stream the tensor data ourselves (GGUFWriter would need every tensor
        # in memory at once). Layout matches GGUFWriter.write_tensors_to_file:
        # the data section and every tensor start on an alignment boundary.
        assert writer.fout is not None and len(writer.fout) == 1
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        _write_tensor_data(fout, specs, seed, writer.data_alignment)
        writer.close()
        os.replace(tmp_path, path)
    except BaseException:
        writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return path
