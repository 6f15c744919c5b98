"""Kefu's side of speaking on a call: reply text cut into sentences, sentences played in real time.

- :class:`SentenceSplitter` turns streamed reply text into sentences as soon as each one ends, so
  the first sentence is synthesized and playing while the model is still writing the rest.
- :class:`Player` sends queued audio to the gateway in 20 ms frames at real-time pace (a gateway's
  jitter buffer is small; sending faster than real time would make a barge-in ``clear`` throw away
  audio the caller was never going to hear anyway, but lets the buffer overflow on some gateways),
  and can be cleared at once. It knows which sentences were played to the end: after a barge-in,
  only those go into the conversation's history — what the caller actually heard. A sentence can be
  played while it is still being synthesized (:meth:`Player.open` / :meth:`Player.extend` /
  :meth:`Player.complete`): its first audio goes out as soon as it arrives. ``idle_since`` is when the
  last frame went out, so silence is timed from the end of what the caller heard.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.telephony.events import FRAME_MS, frame_bytes

_END = re.compile(r"[。！？!?；;…\n]+|(?<=[A-Za-z0-9\)])[.](?=\s)")  # "2." then "5" in a stream is not an end
_CLAUSE = re.compile(r"[，,、：:]\s*|\s+")
MIN_SENTENCE_CHARS = 4  # "好。" alone is merged with what follows
MAX_SENTENCE_CHARS = 40  # a sentence that runs on is spoken from its last clause break (or cut) at this length


class SentenceSplitter:
    def __init__(self) -> None:
        self._buffer = ""
        self.spoke = False  # at least one sentence was released

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        sentences: list[str] = []
        while True:
            match = _END.search(self._buffer)
            if match is None:
                break
            candidate = self._buffer[: match.end()].strip()
            if len(candidate) < MIN_SENTENCE_CHARS and match.end() < len(self._buffer):
                # too short to be worth its own synthesis: keep it with the next sentence
                nxt = _END.search(self._buffer, match.end())
                if nxt is None:
                    break
                candidate, end = self._buffer[: nxt.end()].strip(), nxt.end()
            else:
                end = match.end()
            if len(candidate) < MIN_SENTENCE_CHARS and end == len(self._buffer):
                break
            self._buffer = self._buffer[end:]
            if candidate:
                sentences.append(candidate)
        while len(self._buffer) > MAX_SENTENCE_CHARS:  # no sentence end in sight: do not keep the caller waiting
            breaks = [m.end() for m in _CLAUSE.finditer(self._buffer, 0, MAX_SENTENCE_CHARS)]
            cut = breaks[-1] if breaks and breaks[-1] >= MIN_SENTENCE_CHARS else MAX_SENTENCE_CHARS
            sentences.append(self._buffer[:cut].strip())
            self._buffer = self._buffer[cut:]
        self.spoke = self.spoke or bool(sentences)
        return sentences

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        self.spoke = self.spoke or bool(rest)
        return [rest] if rest else []


@dataclass
class _Utterance:
    text: str
    pcm: bytearray
    tag: int = 0  # whose sentence (the inbound message it answers; 0 for Kefu's own prompts)
    sent: int = 0  # bytes already sent
    complete: bool = True  # False while its audio is still being synthesized


class Player:
    """Plays queued sentences through ``send`` (an async frame sender) at real-time pace."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], sample_rate: int) -> None:
        self._send = send
        self._frame = frame_bytes(sample_rate)
        self._queue: deque[_Utterance] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.heard: list[str] = []  # sentences played to the end, in order
        self._heard_tags: list[tuple[int, str]] = []
        self._task: asyncio.Task[None] | None = None
        self.idle_since = time.monotonic()  # when the last queued frame went out (or the queue was cleared)
        self.clears = 0  # how many times the queue was cleared (barge-in)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @property
    def playing(self) -> bool:
        return not self._idle.is_set()

    def say(self, text: str, pcm: bytes, tag: int = 0) -> None:
        self._queue.append(_Utterance(text, bytearray(pcm), tag))
        self._idle.clear()
        self._wake.set()

    def open(self, text: str, tag: int = 0) -> _Utterance:
        """A sentence whose audio follows (:meth:`extend`, then :meth:`complete`); it plays as it arrives."""
        utterance = _Utterance(text, bytearray(), tag, complete=False)
        self._queue.append(utterance)
        self._idle.clear()
        self._wake.set()
        return utterance

    def extend(self, utterance: _Utterance, pcm: bytes) -> None:
        utterance.pcm += pcm
        self._wake.set()

    def complete(self, utterance: _Utterance) -> None:
        utterance.complete = True
        self._wake.set()

    def clear(self) -> list[tuple[int, str]]:
        """Drop everything not yet sent (barge-in); returns (tag, sentence) cut off or never started."""
        dropped = [(u.tag, u.text) for u in self._queue]
        self._queue.clear()
        self.clears += 1
        self._went_idle()
        return dropped

    def _went_idle(self) -> None:
        if not self._idle.is_set():
            self.idle_since = time.monotonic()
        self._idle.set()

    def queued_tags(self) -> set[int]:
        """Whose sentences are still waiting or playing."""
        return {u.tag for u in self._queue}

    def heard_for(self, tag: int) -> str:
        """The sentences of ``tag`` played to the end."""
        return "".join(text for t, text in self._heard_tags if t == tag)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            if not self._queue:
                self._went_idle()
                self._wake.clear()
                await self._wake.wait()
                next_at = time.monotonic()
                continue
            current = self._queue[0]
            chunk = bytes(current.pcm[current.sent : current.sent + self._frame])
            if len(chunk) < self._frame and not current.complete:  # played all that was synthesized so far
                self._wake.clear()
                await self._wake.wait()
                next_at = max(next_at, time.monotonic())
                continue
            if chunk:
                try:
                    await self._send(chunk)
                except Exception:  # the line is gone (hang-up, closed socket): stop playing, stay idle
                    self._queue.clear()
                    self._went_idle()
                    return
                current.sent += len(chunk)
                next_at += FRAME_MS / 1000
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.monotonic()  # fell behind (a slow socket): do not burst to catch up
            if self._queue and self._queue[0] is current and current.complete and current.sent >= len(current.pcm):
                self._queue.popleft()
                self.heard.append(current.text)
                self._heard_tags.append((current.tag, current.text))


class PromptAudio:
    """Synthesized fixed prompts (greetings, notices), shared by the calls of one gateway process.

    Kept per synthesizer (weakly: a synthesizer that goes away takes its prompts with it), text and
    rate; an entry lives ``ttl_s`` (a prompt spoken by the fallback voice while the cloud one was down
    is not kept for ever) and the least recently used goes first beyond ``size`` entries. Answers are
    never cached: they are not said twice.
    """

    def __init__(self, size: int = 64, ttl_s: float = 600.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._by_voice: weakref.WeakKeyDictionary[object, dict[tuple[str, int], tuple[float, bytes]]] = \
            weakref.WeakKeyDictionary()

    def get(self, synthesizer: object, text: str, rate: int) -> bytes | None:
        entries = self._by_voice.get(synthesizer)
        entry = entries.pop((text, rate), None) if entries is not None else None
        if entries is None or entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        entries[(text, rate)] = entry  # most recently used last
        return entry[1]

    def put(self, synthesizer: object, text: str, rate: int, pcm: bytes) -> None:
        entries = self._by_voice.setdefault(synthesizer, {})
        entries[(text, rate)] = (time.monotonic(), pcm)
        while len(entries) > self.size:
            del entries[next(iter(entries))]


PROMPTS = PromptAudio()  # used from the gateway's event loop only
