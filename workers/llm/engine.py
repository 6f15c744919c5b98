"""Text generation with llama-cpp-python, one sequence at a time (the simple path).

Guarantees:
- The model is loaded lazily, on first use, in the process that uses it (never in a prefork
  parent: CUDA contexts do not survive fork). ``n_gpu_layers`` defaults to every layer when the
  CUDA/Metal build is present, else 0.
- One generation at a time per engine (llama.cpp contexts are not thread-safe); a prefix shared
  with the previous prompt (the system prompt) is not evaluated again.
- Qwen3 semantics: ChatML, thinking off unless configured, stop on ``<|im_end|>`` /
  ``<|endoftext|>``, Qwen3's recommended non-thinking sampling by default, think blocks stripped.
- Any other architecture is prompted with its GGUF's own chat template (:mod:`workers.llm.chat_template`; ChatML when
  the file has none) and also stops on the model's EOS and EOT tokens.
- Every generation ends by itself: on a stop token, at ``max_tokens`` or at its deadline (checked between
  tokens; :mod:`workers.llm.watchdog` covers a step that outlasts it). A request that got the engine only
  after its deadline returns at once, empty, with ``finish_reason`` ``deadline``.
- The prompt fits the context window and the deadline: the oldest history is dropped until the engine,
  at its measured prefill rate (:mod:`workers.llm.prefill`), can read it in half the time left; the
  system prompt and the question always stay.

Raises :class:`PromptTooLong` when the question cannot fit the context window, and
:class:`GenerationError` for any failure of the model itself.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from models.envelope import Turn, printable
from models.infra import metrics
from models.settings import Settings
from workers.llm.chat_template import ChatTemplate, for_model
from workers.llm.cpu_buffers import model_defaults, use_extra_buffers
from workers.llm.model_files import ModelSpec
from workers.llm.prefill import PrefillRate
from workers.llm.prompts import STOP_TEXTS, Prompt, ThinkFilter, Tokenize, chatml_tokens, fit_turns, strip_think

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

REPLY_ROOM_MIN = 64  # tokens kept free for the answer when trimming history


class GenerationError(RuntimeError):
    """The model failed to produce an answer."""


class PromptTooLong(GenerationError):
    """System prompt plus the customer's message exceed the context window."""


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | deadline | cancelled; deadline_missed: workers.llm.watchdog's
    first_token_s: float | None
    total_s: float


# Streamed reply text; returning False asks the engine to stop generating (the listener went away).
TextCallback = Callable[[str], "bool | None"]


class TextEngine(Protocol):
    """What a worker needs from an engine: the simple :class:`LlamaEngine` or the batched one."""

    @property
    def model_name(self) -> str: ...

    def load(self) -> Any: ...
    def close(self) -> None: ...
    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation: ...


@runtime_checkable
class ChoosingEngine(Protocol):
    """An engine that can also answer within a grammar (both engines here; a test's scripted engine may not)."""

    architecture: str  # the GGUF's general.architecture, known once loaded

    def load(self) -> Any: ...
    def choose(self, turns: list[Turn], grammar: str, *, max_new: int = 24,
               deadline: float | None = None) -> Generation: ...


def build_prompt(tokenize: Tokenize, turns: list[Turn], settings: Settings, architecture: str, *,
                 readable: int | None = None, template: ChatTemplate | None = None) -> list[int]:
    """The prompt as token ids (:func:`fitted_prompt`)."""
    return fitted_prompt(tokenize, turns, settings, architecture, readable=readable, template=template).tokens


def fitted_prompt(tokenize: Tokenize, turns: list[Turn], settings: Settings, architecture: str, *,
                  readable: int | None = None, template: ChatTemplate | None = None) -> Prompt:
    """The prompt (ChatML, or ``template``: the model's own), oldest history dropped until it leaves room for the
    answer and, with ``readable`` (the prompt tokens the engine can read before the deadline), until it is that
    short — never dropping the system turns or the question."""

    def build(candidate: list[Turn]) -> Prompt:
        if template is not None:
            return template.tokens(tokenize, candidate, enable_thinking=settings.enable_thinking)
        return Prompt(chatml_tokens(tokenize, candidate, architecture=architecture,
                                    enable_thinking=settings.enable_thinking))

    def measure(candidate: list[Turn]) -> int:
        return len(build(candidate).tokens)

    budget = settings.n_ctx - min(settings.max_tokens, max(REPLY_ROOM_MIN, settings.n_ctx // 4))
    try:
        fitted = fit_turns(turns, measure, budget)
    except ValueError as exc:
        raise PromptTooLong(f"{exc} (n_ctx={settings.n_ctx})") from None
    if readable is not None:
        fitted = fit_turns(fitted, measure, readable, strict=False)
    return build(fitted)


def readable_tokens(rate: PrefillRate, deadline: float | None, *, waiting_s: float = 0.0, cached: int = 0) -> int | None:
    """The prompt length the engine can read by ``deadline``: ``waiting_s`` for a slot first, ``cached`` tokens
    (a shared prefix already in the KV cache) free. None without a deadline or a measured rate."""
    if deadline is None:
        return None
    within = rate.tokens_within(deadline - time.monotonic() - waiting_s)
    return None if within is None else within + cached


def stop_token_ids(tokenize: Tokenize, eos: int, *also: int) -> frozenset[int]:
    """End-of-generation ids: the model's EOS (and ``also``: its EOT), and ChatML's ``<|im_end|>`` / ``<|endoftext|>``."""
    ids = {eos, *(token for token in also if token >= 0)}
    for text in STOP_TEXTS:
        tokens = tokenize(text, True)
        if len(tokens) == 1:
            ids.add(tokens[0])
    return frozenset(ids)


def model_template(model: Any, architecture: str, name: str) -> ChatTemplate | None:
    """The chat template to prompt a loaded llama.cpp model (``llama_cpp._internals.LlamaModel``) with; None: ChatML."""

    def text(token: int) -> str:
        return str(model.token_get_text(token)) if token >= 0 else ""

    bos = int(model.token_bos())
    return for_model(model.metadata(), architecture, bos_token=text(bos), eos_token=text(int(model.token_eos())),
                     bos_id=bos, name=name)


def _cached_prefix(llm: Llama, tokens: list[int]) -> int:
    """Leading tokens whose KV llama-cpp-python kept from the previous prompt (it skips reading them)."""
    try:
        return int(llm.longest_token_prefix(llm._input_ids[: llm.n_tokens].tolist(), tokens))
    except Exception:  # a private attribute of another llama-cpp-python version: measure the whole prompt
        return 0


def default_gpu_layers() -> int:
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


class LlamaEngine:
    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self._llm: Llama | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.architecture = "unknown"
        self._stop_ids: frozenset[int] = frozenset()
        self.template: ChatTemplate | None = None  # the GGUF's own chat template, once loaded; None: ChatML
        self.prefill = PrefillRate()

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def loaded(self) -> bool:
        """The model is in memory (the worker's heartbeat says so: models.infra.heartbeat)."""
        return self._llm is not None

    def load(self) -> Llama:
        if self._llm is not None:
            return self._llm
        with self._load_lock:
            if self._llm is None:
                from llama_cpp import Llama

                s = self.settings
                gpu_layers = default_gpu_layers() if s.n_gpu_layers is None else s.n_gpu_layers
                started = time.monotonic()
                with model_defaults(use_extra_buffers(s.llama_extra_buffers)):
                    llm = Llama(
                        model_path=str(self.spec.path),
                        n_ctx=s.n_ctx,
                        n_batch=s.n_batch,
                        n_threads=s.n_threads or max(1, len(os.sched_getaffinity(0))),
                        n_gpu_layers=gpu_layers,
                        seed=s.seed if s.seed is not None else 0xFFFFFFFF,
                        verbose=False,
                    )
                self.architecture = str(llm.metadata.get("general.architecture", "unknown"))
                self._stop_ids = stop_token_ids(
                    lambda text, special: list(llm.tokenize(text.encode(), add_bos=False, special=special)),
                    llm.token_eos(), llm._model.token_eot())
                self.template = model_template(llm._model, self.architecture, self.spec.name)
                log.info(
                    "model %s loaded in %.2fs (architecture %s, n_ctx %d, gpu layers %d)",
                    self.spec.name, time.monotonic() - started, self.architecture, s.n_ctx, gpu_layers,
                )
                self._llm = llm
                metrics.model_loaded(True)
        return self._llm

    def close(self) -> None:
        """Free the model now (llama-cpp-python's own finalizer fails at interpreter exit)."""
        with self._load_lock, self._run_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                metrics.model_loaded(False)

    def prompt_tokens(self, turns: list[Turn], deadline: float | None = None) -> list[int]:
        """The prompt, trimmed to the context window and to what can be read by ``deadline``."""
        llm = self.load()
        return build_prompt(lambda text, special: list(llm.tokenize(text.encode(), add_bos=False, special=special)),
                            turns, self.settings, self.architecture, readable=readable_tokens(self.prefill, deadline),
                            template=self.template)

    def generate(
        self,
        turns: list[Turn],
        *,
        on_text: TextCallback | None = None,
        deadline: float | None = None,
    ) -> Generation:
        """Answer the last user turn. ``deadline`` is a ``time.monotonic()`` instant."""
        with self._run_lock:
            started = time.monotonic()
            if deadline is not None and started >= deadline:  # waited past it for the engine: do not read the prompt
                return Generation("", self.spec.name, 0, 0, "deadline", None, 0.0)
            try:
                tokens = self.prompt_tokens(turns, deadline)
                return self._run(tokens, on_text, deadline, started)
            except GenerationError:
                raise
            except Exception as exc:  # llama.cpp failures surface as assorted exceptions
                raise GenerationError(f"{type(exc).__name__}: {exc}") from exc

    def choose(self, turns: list[Turn], grammar: str, *, max_new: int = 24,
               deadline: float | None = None) -> Generation:
        """A short greedy completion that llama.cpp's grammar sampler keeps within ``grammar`` (GBNF): e.g. one
        label of a set (workers.intent_model). Ends on a stop token, at ``max_new`` tokens or at ``deadline``."""
        with self._run_lock:
            started = time.monotonic()
            if deadline is not None and started >= deadline:
                return Generation("", self.spec.name, 0, 0, "deadline", None, 0.0)
            try:
                from llama_cpp import LlamaGrammar

                llm = self.load()
                tokens = self.prompt_tokens(turns, deadline)
                compiled = LlamaGrammar.from_string(grammar, verbose=False)
                produced, finish, out = 0, "length", []
                for token in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                          grammar=compiled):
                    if token in self._stop_ids:
                        finish = "stop"
                        break
                    out.append(token)
                    produced += 1
                    if produced >= max_new or (deadline is not None and time.monotonic() >= deadline):
                        finish = "length" if produced >= max_new else "deadline"
                        break
            except GenerationError:
                raise
            except Exception as exc:  # llama.cpp failures surface as assorted exceptions
                raise GenerationError(f"{type(exc).__name__}: {exc}") from exc
            text = llm.detokenize(out).decode("utf-8", errors="replace")
            return Generation(printable(text), self.spec.name, len(tokens), produced, finish, None,
                              time.monotonic() - started)

    def _run(
        self, tokens: list[int], on_text: TextCallback | None, deadline: float | None, started: float
    ) -> Generation:
        llm = self.load()
        s = self.settings
        max_new = max(1, min(s.max_tokens, s.n_ctx - len(tokens)))
        to_read = len(tokens) - _cached_prefix(llm, tokens)  # what llama-cpp-python evaluates anew
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        think = ThinkFilter()
        pieces: list[str] = []
        produced, first_token_s, finish = 0, None, "length"

        wants_more = True

        def emit(text: str) -> None:
            nonlocal wants_more
            text = printable(text)
            if text:
                pieces.append(text)
                if on_text is not None:
                    try:
                        wants_more = on_text(text) is not False and wants_more
                    except Exception:  # streaming is best effort; the reply row is what counts
                        log.exception("streaming callback failed")

        sampling: dict[str, Any] = {
            "temp": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
            "presence_penalty": s.presence_penalty, "repeat_penalty": 1.0,
        }
        for token in llm.generate(tokens, **sampling):
            if token in self._stop_ids:
                finish = "stop"
                break
            produced += 1
            if first_token_s is None:
                first_token_s = time.monotonic() - started
                self.prefill.observe(to_read, first_token_s)
            emit(think.feed(decoder.decode(llm.detokenize([token]))))
            if produced >= max_new:
                finish = "length"
                break
            if deadline is not None and time.monotonic() >= deadline:
                finish = "deadline"
                break
            if not wants_more:  # the listener went away (a caller who spoke over the answer)
                finish = "cancelled"
                break
        emit(think.flush())  # an incomplete UTF-8 tail (cut by max_tokens) is dropped, not shown as U+FFFD
        return Generation(
            text=strip_think("".join(pieces)),
            model=self.spec.name,
            prompt_tokens=len(tokens),
            completion_tokens=produced,
            finish_reason=finish,
            first_token_s=first_token_s,
            total_s=time.monotonic() - started,
        )
