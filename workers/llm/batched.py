"""Continuous batching: every active conversation of a worker process in each llama.cpp decode step.

One model and one context per process, ``n_slots`` sequences in a unified KV cache, driven by one
scheduler thread; any number of caller threads (Celery's thread pool) submit requests and wait.

Each step of the scheduler:

1. admits queued requests into free slots. The shared prefix (the system prompt block) lives in
   sequence 0 and is copied into the new sequence (``llama_memory_seq_cp``: the KV cells are
   shared, nothing is recomputed); only the rest of the prompt is left to prefill;
2. builds one batch: the last sampled token of every generating sequence, then up to
   ``prefill_chunk`` prompt tokens of sequences still prefilling (so a long new prompt never
   stalls running answers for more than a chunk), within ``n_batch``;
3. decodes it once and samples each sequence that produced logits with its own sampler chain;
4. queues the new text for the request (its waiting caller thread hands it to ``on_text``, so a
   slow consumer never delays a decode step), and releases a slot (``llama_memory_seq_rm``,
   its sampler freed) on end of generation, ``max_tokens``, deadline or cancellation.

Prompts are trimmed like the simple engine's, to the context and to the deadline (the prefill rate
is measured on the steps that read prompt tokens).

Qwen3 semantics and output are those of the simple engine (ChatML prompt ids, thinking off, both
stop tokens, think blocks removed); with greedy sampling a request produces the same tokens alone
or in a batch. Requests wait in a FIFO queue when every slot is busy; :meth:`wait_estimate_s` says
how long a new one would wait.

Raises :class:`~workers.llm.engine.PromptTooLong` for a prompt that cannot fit a sequence's context
and :class:`~workers.llm.engine.GenerationError` for a failure of the model; the scheduler survives
both and keeps serving the other sequences.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.envelope import Turn, printable
from models.infra import metrics
from models.settings import Settings
from workers.llm.chat_template import ChatTemplate
from workers.llm.cpu_buffers import use_extra_buffers
from workers.llm.engine import (
    Generation,
    GenerationError,
    PromptTooLong,
    TextCallback,
    default_gpu_layers,
    fitted_prompt,
    model_template,
    readable_tokens,
    stop_token_ids,
)
from workers.llm.model_files import ModelSpec
from workers.llm.prefill import PrefillRate
from workers.llm.prompts import IM_END, Prompt, ThinkFilter, strip_think

log = logging.getLogger(__name__)

PREFIX_SEQ = 0  # holds the shared prefix's KV; slots use sequence ids 1..n_slots
MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a copy
PENALTY_LAST_N = 64
WAIT_REPORT_S = 5.0  # the wait estimate is reported at least this often while busy, and when it changes


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    presence_penalty: float
    seed: int

    @classmethod
    def from_settings(cls, s: Settings) -> Sampling:
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        return cls(s.temperature, s.top_p, s.top_k, s.min_p, s.presence_penalty, seed)


@dataclass(eq=False)
class Request:
    """One generation; created by :meth:`BatchedEngine.submit`. ``cancel()`` is safe from any thread."""

    tokens: list[int]
    shared_prefix: int  # how many leading tokens are the shareable system block
    max_new: int
    sampling: Sampling
    deadline: float | None = None
    on_text: TextCallback | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new tokens
    grammar: str | None = None  # GBNF the sampled tokens must keep to (choose())
    submitted: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    # streamed text, then None at the end: handed to on_text by the thread that waits, never by the engine
    pieces: queue.SimpleQueue[str | None] = field(default_factory=queue.SimpleQueue)
    _drained: bool = False
    result: Generation | None = None
    error: BaseException | None = None
    output_ids: list[int] = field(default_factory=list)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait(self, timeout: float | None = None) -> Generation:
        """Deliver the streamed pieces to ``on_text`` in this (the caller's) thread, then the result.

        A slow ``on_text`` therefore delays only its own caller, never the engine or other requests;
        ``on_text`` returning False cancels the generation.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._drained:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                piece = self.pieces.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError("generation still running") from None
            if piece is None:
                self._drained = True
            elif self.on_text is not None:
                try:
                    if self.on_text(piece) is False:  # the listener went away: stop generating for it
                        self.cancel()
                except Exception:  # streaming is best effort; the reply row is what counts
                    log.exception("streaming callback failed")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(eq=False)
class _Slot:
    seq: int
    request: Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    pos: int = 0  # next position in this sequence
    next_token: int | None = None  # sampled, to be decoded in the next step
    sampler: Any = None
    decoder: Any = None
    think: ThinkFilter | None = None
    pieces: list[str] = field(default_factory=list)
    admitted: float = 0.0
    first_token_s: float | None = None
    prompt_reused: int = 0


class BatchedEngine:
    def __init__(self, spec: ModelSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.n_slots = settings.n_slots
        self.architecture = "unknown"
        self._load_lock = threading.Lock()
        self._cv = threading.Condition()
        self._queue: deque[Request] = deque()
        self._slots = [_Slot(seq=i + 1) for i in range(self.n_slots)]
        self._prefix: list[int] = []  # the tokens whose KV sequence PREFIX_SEQ holds
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self.template: ChatTemplate | None = None  # the GGUF's own chat template, once loaded; None: ChatML
        self._service_ema_s = 0.0
        self.prefill = PrefillRate()  # measured on steps that read prompt tokens; trims prompts to the deadline
        # Told the wait estimate (seconds) from the scheduler thread when the queue changes, at most
        # every WAIT_REPORT_S; must be quick and must not raise.
        self.on_wait_estimate: Callable[[float], None] | None = None
        self._reported_at = 0.0
        self._kv_total = 0  # the context's cells, once loaded (metrics.kv_cells)
        self._reported = -1.0
        self._vocab: Any = None
        self._piece_buffer = ctypes.create_string_buffer(256)
        self.stats: dict[str, float] = {"steps": 0, "prefix_tokens_reused": 0, "prompt_tokens_evaluated": 0,
                                        "completed": 0, "decode_s": 0.0, "sample_s": 0.0}

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def loaded(self) -> bool:
        """The model and its context are in memory (the worker's heartbeat says so: models.infra.heartbeat)."""
        return self._ctx is not None

    # ---- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        if self._ctx is not None:
            return
        with self._load_lock:
            if self._ctx is not None:
                return
            import llama_cpp
            from llama_cpp._internals import LlamaModel
            from llama_cpp._logger import set_verbose

            s = self.settings
            set_verbose(s.log_level == "DEBUG")  # llama.cpp's own log lines only when debugging
            started = time.monotonic()
            model_params = llama_cpp.llama_model_default_params()
            gpu_layers = default_gpu_layers() if s.n_gpu_layers is None else s.n_gpu_layers
            model_params.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
            model_params.use_extra_bufts = use_extra_buffers(s.llama_extra_buffers)
            model = LlamaModel(path_model=str(self.spec.path), params=model_params, verbose=False)
            params = llama_cpp.llama_context_default_params()
            threads = s.n_threads or max(1, len(os.sched_getaffinity(0)))
            # Unified KV: the prefix's cells are shared by every sequence that copies it. Room for every
            # slot's own context, so a full batch never runs out of cells.
            params.n_ctx = s.n_ctx * self.n_slots
            params.n_batch = params.n_ubatch = max(s.n_batch, self.n_slots)
            params.n_seq_max = self.n_slots + 1
            params.n_threads = params.n_threads_batch = threads
            params.kv_unified = True
            params.no_perf = True
            ctx = llama_cpp.llama_init_from_model(model.model, params)
            if ctx is None:
                model.close()
                raise GenerationError("llama.cpp could not create a context (out of memory?)")
            self._model = model
            self._mem = llama_cpp.llama_get_memory(ctx)
            self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
            self._n_batch = int(params.n_batch)
            self.architecture = str(model.metadata().get("general.architecture", "unknown"))
            self._vocab = model.vocab
            self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
            self._stop_ids = stop_token_ids(self._tokenize, model.token_eos(), model.token_eot())
            self.template = model_template(model, self.architecture, self.spec.name)
            self._im_end = self._tokenize(IM_END, True)
            self._stopping = False
            self._prefix = []
            self._thread = threading.Thread(target=self._loop, name="kefu-batched-engine", daemon=True)
            self._thread.start()
            self._ctx = ctx  # last: a concurrent load() returns early only once everything above is set
            log.info("model %s loaded in %.2fs (architecture %s, %d slots x n_ctx %d, unified KV, gpu layers %d)",
                     self.spec.name, time.monotonic() - started, self.architecture, self.n_slots, s.n_ctx, gpu_layers)
            metrics.model_loaded(True)
            metrics.slots(self.n_slots)
            self._kv_total = int(params.n_ctx)
            metrics.kv_cells(self._kv_total, 0)

    def close(self) -> None:
        """Stop the scheduler (failing what is still queued or running) and free the model."""
        with self._load_lock:
            if self._ctx is None:
                return
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=30)
            import llama_cpp

            for slot in self._slots:
                if slot.sampler is not None:
                    llama_cpp.llama_sampler_free(slot.sampler)
                    slot.sampler = None
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._model.close()
            self._ctx = self._model = self._mem = self._batch = None
            metrics.model_loaded(False)
            metrics.slots(0)
            metrics.slots_busy(0)
            metrics.kv_cells(0, 0)

    # ---- the caller's side -----------------------------------------------------------------------

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return list(self._model.tokenize(text.encode(), add_bos=False, special=special))

    def prompt_tokens(self, turns: list[Turn], deadline: float | None = None) -> list[int]:
        """The prompt, trimmed to a sequence's context and to what can be read by ``deadline`` (after the wait for
        a slot; the shared system block is already in the cache)."""
        return self.prompt(turns, deadline).tokens

    def prompt(self, turns: list[Turn], deadline: float | None = None) -> Prompt:
        """:meth:`prompt_tokens`, with the length of its system block when the model's own template made it."""
        self.load()
        readable = readable_tokens(self.prefill, deadline, waiting_s=self.wait_estimate_s(), cached=len(self._prefix))
        return fitted_prompt(self._tokenize, turns, self.settings, self.architecture, readable=readable,
                             template=self.template)

    def shared_prefix_len(self, tokens: list[int]) -> int:
        """Length of the system block (up to and including its ``<|im_end|>\\n``), 0 if there is none."""
        marker = self._im_end
        for i in range(len(tokens) - len(marker) + 1):
            if tokens[i : i + len(marker)] == marker:
                return min(len(tokens) - 1, i + len(marker) + 1)  # + the newline token after it
        return 0

    def submit(self, tokens: list[int], *, max_new: int | None = None, deadline: float | None = None,
               on_text: TextCallback | None = None, sampling: Sampling | None = None,
               ignore_eos: bool = False, shared_prefix: int | None = None, grammar: str | None = None) -> Request:
        """Queue a generation; returns at once. Raises PromptTooLong when it cannot fit a sequence."""
        self.load()
        s = self.settings
        if not tokens:
            raise GenerationError("empty prompt")
        if len(tokens) >= s.n_ctx:
            raise PromptTooLong(f"the prompt has {len(tokens)} tokens; a conversation's context holds {s.n_ctx}")
        request = Request(
            tokens=list(tokens),
            shared_prefix=self.shared_prefix_len(tokens) if shared_prefix is None else shared_prefix,
            max_new=max(1, min(max_new or s.max_tokens, s.n_ctx - len(tokens))),
            sampling=sampling or Sampling.from_settings(s),
            deadline=deadline, on_text=on_text, ignore_eos=ignore_eos, grammar=grammar,
        )
        with self._cv:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                raise GenerationError("the engine is shut down")
            self._queue.append(request)
            self._cv.notify_all()
        return request

    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation:
        """Answer the last user turn (blocking); the interface of the simple engine."""
        try:
            tokens, shared = self.prompt(turns, deadline)
            request = self.submit(tokens, deadline=deadline, on_text=on_text, shared_prefix=shared)
        except GenerationError:
            raise
        except Exception as exc:
            raise GenerationError(f"{type(exc).__name__}: {exc}") from exc
        return request.wait()

    def choose(self, turns: list[Turn], grammar: str, *, max_new: int = 24,
               deadline: float | None = None) -> Generation:
        """A short greedy completion within ``grammar`` (GBNF; llama.cpp's grammar sampler), batched with the
        conversations being answered: e.g. one label of a set (workers.intent_model). Its prompt shares no prefix
        with the answers' system block, so it does not replace the shared prefix (shared_prefix=0)."""
        try:
            tokens = self.prompt_tokens(turns, deadline)
            request = self.submit(tokens, max_new=max_new, deadline=deadline, grammar=grammar, shared_prefix=0,
                                  sampling=Sampling(0.0, 1.0, 0, 0.0, 0.0, 0))
        except GenerationError:
            raise
        except Exception as exc:
            raise GenerationError(f"{type(exc).__name__}: {exc}") from exc
        return request.wait()

    @property
    def service_s(self) -> float:
        """How long a request has spent in a slot, on average lately (0.0 before the first): the time one more
        request waiting for the engine adds, divided by the slots."""
        return self._service_ema_s

    def wait_estimate_s(self) -> float:
        """How long a request submitted now would wait for a slot (0 when one is free)."""
        with self._cv:
            busy = sum(1 for slot in self._slots if slot.request is not None)
            ahead = len(self._queue) + busy - self.n_slots + 1
        if ahead <= 0:
            return 0.0
        return ahead / self.n_slots * self._service_ema_s

    def _report_wait(self, force: bool = False) -> None:
        if self.on_wait_estimate is None:
            return
        now = time.monotonic()
        estimate = self.wait_estimate_s()
        if estimate == self._reported and (force or now - self._reported_at < WAIT_REPORT_S):
            return
        if not force and estimate != self._reported and now - self._reported_at < 0.2:
            return
        self._reported_at, self._reported = now, estimate
        try:
            self.on_wait_estimate(estimate)
        except Exception:
            log.exception("wait estimate callback failed")

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._queue)

    # ---- the scheduler thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                metrics.slots_busy(len(self._active()))  # as the last step left them (idle: 0 before sleeping)
                metrics.kv_cells(self._kv_total, self._kv_used())
                if not self._queue and not self._active():
                    self._report_wait(force=True)  # going idle: say so before sleeping
                with self._cv:
                    while not self._stopping and not self._queue and not self._active():
                        self._cv.wait()
                    if self._stopping:
                        break
                    admitted = self._take_admissions()
                for slot, request in admitted:
                    self._admit(slot, request)
                self._expire()
                self._report_wait()
                if self._active():
                    self._step()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("batched engine scheduler crashed")
            with self._cv:
                self._stopping = True  # refuse new requests instead of queueing them for nobody
            self._fail_everything(GenerationError(f"engine failure: {type(exc).__name__}: {exc}"))
            return
        self._fail_everything(GenerationError("the engine is shut down"))

    def _active(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.request is not None]

    def _kv_used(self) -> int:
        """Cells held now: the shared prefix once, and each active conversation's own tokens past what it reused of
        it (copied prefix cells are shared, not duplicated: unified KV)."""
        return len(self._prefix) + sum(max(0, slot.pos - slot.prompt_reused) for slot in self._active())

    def _take_admissions(self) -> list[tuple[_Slot, Request]]:
        taken: list[tuple[_Slot, Request]] = []
        for slot in self._slots:
            if slot.request is not None or any(slot is t[0] for t in taken):
                continue
            while self._queue:
                request = self._queue.popleft()
                if request.cancelled or (request.deadline is not None and time.monotonic() >= request.deadline):
                    self._resolve_unstarted(request)
                    continue
                taken.append((slot, request))
                slot.request = request  # reserved: wait_estimate_s counts it busy
                break
        return taken

    def _resolve_unstarted(self, request: Request) -> None:
        reason = "cancelled" if request.cancelled else "deadline"
        request.result = Generation("", self.spec.name, len(request.tokens), 0, reason, None,
                                    time.monotonic() - request.submitted)
        self._release(request)

    def _admit(self, slot: _Slot, request: Request) -> None:
        import llama_cpp

        try:
            sampler = self._new_sampler(request.sampling, request.grammar)
        except GenerationError as exc:  # a grammar llama.cpp refused: this request fails, the engine serves on
            slot.request, request.error = None, exc
            self._release(request)
            return
        reuse = min(self._prefix_for(request), len(request.tokens) - 1)  # at least one token left to prefill
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        if reuse:
            llama_cpp.llama_memory_seq_cp(self._mem, PREFIX_SEQ, slot.seq, 0, reuse)
            self.stats["prefix_tokens_reused"] += reuse
        slot.request = request
        slot.pending = request.tokens[reuse:]
        slot.pos = reuse
        slot.prompt_reused = reuse
        slot.next_token = None
        slot.sampler = sampler
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.think = ThinkFilter()
        slot.pieces = []
        slot.admitted = time.monotonic()
        slot.first_token_s = None

    def _prefix_for(self, request: Request) -> int:
        """Make sequence 0 hold this request's shared prefix if it does not yet; the tokens to reuse."""
        want = request.tokens[: request.shared_prefix]
        if len(want) < MIN_SHARED_PREFIX:
            return 0
        if self._prefix == want:
            return len(want)
        # A different system prompt (or the first request): evaluate it once into sequence 0. Slots that
        # copied the old prefix keep their own references to its cells.
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._mem, PREFIX_SEQ, -1, -1)
        self._prefix = []
        for start in range(0, len(want), self._n_batch):
            chunk = want[start : start + self._n_batch]
            self._fill_batch([(token, start + i, PREFIX_SEQ, False) for i, token in enumerate(chunk)])
            if llama_cpp.llama_decode(self._ctx, self._batch) != 0:
                llama_cpp.llama_memory_seq_rm(self._mem, PREFIX_SEQ, -1, -1)
                log.warning("could not evaluate the shared prefix; this request prefills it itself")
                return 0
        self.stats["prompt_tokens_evaluated"] += len(want)
        self._prefix = want
        return len(want)

    def _new_sampler(self, sampling: Sampling, grammar: str | None = None) -> Any:
        import llama_cpp

        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar is not None:  # first: every later sampler sees only the tokens the grammar allows
            constrained = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not constrained:
                llama_cpp.llama_sampler_free(chain)
                raise GenerationError("llama.cpp could not parse the grammar")
            llama_cpp.llama_sampler_chain_add(chain, constrained)
        if sampling.presence_penalty:
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, 1.0, 0.0,
                                                              sampling.presence_penalty))
        if sampling.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF))
        return chain

    def _expire(self) -> None:
        now = time.monotonic()
        for slot in self._active():
            request = slot.request
            assert request is not None
            if request.cancelled:
                self._finish(slot, "cancelled")
            elif request.deadline is not None and now >= request.deadline:
                self._finish(slot, "deadline")

    def _fill_batch(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = len(entries)

    def _step(self) -> None:
        import llama_cpp

        entries, outputs, prefilled = self._plan()
        if not entries:
            return
        self._fill_batch(entries)
        started = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        decoded = time.perf_counter()
        self.stats["steps"] += 1
        self.stats["decode_s"] += decoded - started
        if status != 0:
            # 1: no room in the KV cache for this batch; <0: a failure. Fail what was in it, keep serving.
            error = GenerationError(f"llama_decode failed with status {status}")
            for slot in {id(sl): sl for sl, _ in [*outputs, *prefilled]}.values():
                self._finish(slot, "error", error)
            return
        if prefilled:  # a step that read prompt tokens: how fast this engine reads a prompt
            self.prefill.observe(len(entries), decoded - started)
        for slot, count in prefilled:
            slot.pending = slot.pending[count:]
            slot.pos += count
            self.stats["prompt_tokens_evaluated"] += count
        for slot, index in outputs:
            if slot.next_token is not None:  # it was decoded: it now has a position
                slot.pos += 1
            token = int(llama_cpp.llama_sampler_sample(slot.sampler, self._ctx, index))
            self._on_token(slot, token)
        self.stats["sample_s"] += time.perf_counter() - decoded

    def _plan(self) -> tuple[list[tuple[int, int, int, bool]], list[tuple[_Slot, int]], list[tuple[_Slot, int]]]:
        """One step's batch: every generating slot's next token, then prompt chunks of the slots still prefilling
        (oldest first) within ``prefill_chunk``; (entries, outputs as (slot, logits index), prefilled counts)."""
        entries: list[tuple[int, int, int, bool]] = []
        outputs: list[tuple[_Slot, int]] = []  # (slot, batch index of its logits)
        for slot in self._active():
            if slot.next_token is not None:
                outputs.append((slot, len(entries)))
                entries.append((slot.next_token, slot.pos, slot.seq, True))
        budget = min(self.settings.prefill_chunk, self._n_batch - len(entries))
        prefilled: list[tuple[_Slot, int]] = []
        for slot in sorted(self._active(), key=lambda sl: sl.admitted):
            if budget <= 0:
                break
            if slot.next_token is not None or not slot.pending:
                continue
            chunk = slot.pending[:budget]
            last = len(chunk) == len(slot.pending)
            for i, token in enumerate(chunk):
                entries.append((token, slot.pos + i, slot.seq, last and i == len(chunk) - 1))
            if last:
                outputs.append((slot, len(entries) - 1))
            prefilled.append((slot, len(chunk)))
            budget -= len(chunk)
        return entries, outputs, prefilled

    def _on_token(self, slot: _Slot, token: int) -> None:
        request = slot.request
        assert request is not None
        if token in self._stop_ids and not request.ignore_eos:
            self._finish(slot, "stop")
            return
        request.output_ids.append(token)
        if slot.first_token_s is None:
            slot.first_token_s = time.monotonic() - request.submitted
        piece = self._piece(token)
        self._emit(slot, slot.think.feed(slot.decoder.decode(piece)) if slot.think else "")
        if len(request.output_ids) >= request.max_new:
            self._finish(slot, "length")
        elif slot.pos >= self.settings.n_ctx:  # the next token would not fit this conversation's context
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False)
        if n < 0:  # longer than the buffer: grow it once and ask again
            self._piece_buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buffer, -n, 0, False)
        return bytes(self._piece_buffer.raw[: max(0, n)])

    def _emit(self, slot: _Slot, text: str) -> None:
        text = printable(text)
        if not text:
            return
        slot.pieces.append(text)
        request = slot.request
        if request is not None and request.on_text is not None:
            request.pieces.put(text)

    @staticmethod
    def _release(request: Request) -> None:
        """The request is over: its waiter delivers the pieces queued so far, then gets the result."""
        request.pieces.put(None)
        request.done.set()

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        import llama_cpp

        request = slot.request
        assert request is not None
        if slot.think is not None:
            self._emit(slot, slot.think.flush())
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
        now = time.monotonic()
        request.result = Generation(
            text=strip_think("".join(slot.pieces)),
            model=self.spec.name,
            prompt_tokens=len(request.tokens),
            completion_tokens=len(request.output_ids),
            finish_reason=reason,
            first_token_s=slot.first_token_s,
            total_s=now - request.submitted,
        )
        request.error = error
        service = now - slot.admitted
        self._service_ema_s = service if not self._service_ema_s else 0.8 * self._service_ema_s + 0.2 * service
        self.stats["completed"] += 1
        slot.request, slot.sampler, slot.next_token, slot.pending, slot.pieces = None, None, None, [], []
        slot.think = slot.decoder = None
        self._release(request)

    def _fail_everything(self, error: GenerationError) -> None:
        for slot in self._slots:
            if slot.request is not None:
                try:
                    self._finish(slot, "error", error)
                except Exception:
                    slot.request.error = error
                    self._release(slot.request)
                    slot.request = None
        with self._cv:
            while self._queue:
                request = self._queue.popleft()
                request.error = error
                self._release(request)
