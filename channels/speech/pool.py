"""Speech processes: the gateway's recognition and synthesis, run off its interpreter.

Why: a gateway holds every live call on one event loop. Local recognition (pocketsphinx, sherpa-onnx) and the
resampling around speech are CPU work that holds Python's interpreter lock; with twenty callers speaking at
once, the recognizer threads starved the event loop, HTTP stopped answering for up to 30 s and calls were
dropped (issue 14). So recognition and synthesis run in ``processes`` child processes (spawned, each with its
own :class:`~channels.speech.providers.SpeechProviders`), and the gateway only moves audio to and from them.

The gateway's side is the same :class:`~channels.speech.base.Recognizer` / ``Synthesizer`` interface a call
already uses, plus asyncio faces:

- :meth:`SpeechPool.recognizer` → :class:`PooledRecognizer`: ``begin(rate)`` returns a
  :class:`PooledTranscription` (``feed`` never blocks, ``close``, ``finish(timeout)`` blocking,
  ``await result(timeout)``); ``transcribe(pcm, rate)`` for a whole clip.
- :meth:`SpeechPool.synthesizer` → :class:`PooledSynthesizer`: ``synthesize(text, rate)`` blocking, and
  ``astream(text, rate)``: an async iterator of PCM chunks as the child produces them (a provider that
  streams — ``synthesize_stream`` — is streamed end to end).

Wire: one duplex pipe per child carrying pickled tuples ``(op, session, *args)``. Gateway → child: ``begin``,
``feed``, ``finish``, ``close``, ``transcribe``, ``say``, ``cancel``. Child → gateway: ``text``, ``audio``, ``done``,
``error``. Each child has a writer thread (the event loop never waits on a full pipe) and a reader thread
(results reach the session's queue; an asyncio session's through ``call_soon_threadsafe``).

Guarantees: a session is served by one child; a new session goes to the child with the fewest open sessions.
A child that dies fails its open sessions at once with :class:`~channels.speech.base.SpeechError` (the call
says so and transfers, as for any recognizer failure) and is replaced on the next session. Children ignore
SIGINT and exit when the gateway's end of the pipe closes, so a killed gateway leaves none behind.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from channels.speech.base import SpeechError, speech_chunks

if TYPE_CHECKING:
    from models.settings import Settings

log = logging.getLogger(__name__)

RESULT_TIMEOUT_S = 30.0  # an utterance's text after its end; a sentence's next audio chunk
START_TIMEOUT_S = 60.0  # a child loading its models


# ---- the gateway's side ---------------------------------------------------------------------------------

class _Session:
    """What one child sends back for one transcription or one sentence."""

    def __init__(self, child: _Child, sid: int) -> None:
        self.child, self.sid = child, sid
        self._loop: asyncio.AbstractEventLoop | None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._async: asyncio.Queue[tuple[Any, ...]] | None = asyncio.Queue() if self._loop else None
        self._sync: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.closed = False

    def deliver(self, message: tuple[Any, ...]) -> None:
        """From the child's reader thread."""
        if self._loop is not None and self._async is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, message)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
        else:
            self._sync.put(message)

    def send(self, op: str, *args: Any) -> None:
        self.child.send((op, self.sid, *args))

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self.child.forget(self.sid)

    async def next(self, timeout: float) -> tuple[Any, ...]:
        if self._async is None:
            return await asyncio.to_thread(self.next_blocking, timeout)
        try:
            return await asyncio.wait_for(self._async.get(), timeout)
        except TimeoutError:
            raise SpeechError(f"the speech process answered nothing for {timeout:.0f} s") from None

    def next_blocking(self, timeout: float) -> tuple[Any, ...]:
        if self._async is not None:
            raise RuntimeError("an asyncio session is read with next()")
        try:
            return self._sync.get(timeout=timeout)
        except queue.Empty:
            raise SpeechError(f"the speech process answered nothing for {timeout:.0f} s") from None


def _text_of(message: tuple[Any, ...]) -> str:
    if message[0] == "error":
        raise SpeechError(str(message[2]))
    if message[0] != "text":
        raise SpeechError(f"the speech process sent {message[0]!r} where a transcript was expected")
    return str(message[2])


def _audio_of(message: tuple[Any, ...]) -> bytes | None:
    """A sentence's next chunk of audio, None at its end; the child's error raises."""
    if message[0] == "audio":
        return bytes(message[2])
    if message[0] == "done":
        return None
    _text_of(message)  # an error raises here
    raise SpeechError(f"the speech process sent {message[0]!r} where audio was expected")


def _close_sentence(session: _Session, ended: bool) -> None:
    if not ended:  # left early (barge-in) or failed: the child stops synthesizing
        session.send("cancel")
    session.end()


class PooledTranscription:
    """One utterance recognized in a speech process while the caller speaks."""

    def __init__(self, session: _Session, sample_rate: int) -> None:
        self._session, self.sample_rate = session, sample_rate
        self._finished = False
        session.send("begin", sample_rate)

    def feed(self, pcm: bytes) -> None:
        if not self._finished:
            self._session.send("feed", pcm)

    def close(self) -> None:
        """The end of the utterance; the text follows (``result``/``finish``). Safe to call twice."""
        if not self._finished:
            self._finished = True
            self._session.send("finish")

    def cancel(self) -> None:
        """Nobody wants the text (the call ended): the child drops the utterance."""
        self._finished = True
        self._session.send("close")
        self._session.end()

    async def result(self, timeout: float = RESULT_TIMEOUT_S) -> str:
        self.close()
        try:
            return _text_of(await self._session.next(timeout))
        finally:
            self._session.end()

    def finish(self, timeout: float = RESULT_TIMEOUT_S) -> str:
        self.close()
        try:
            return _text_of(self._session.next_blocking(timeout))
        finally:
            self._session.end()


class PooledRecognizer:
    def __init__(self, pool: SpeechPool) -> None:
        self._pool = pool

    def begin(self, sample_rate: int) -> PooledTranscription:
        return PooledTranscription(self._pool.session(), sample_rate)

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        """A whole clip, recognized in one piece (the recognizer's own ``transcribe``); blocking."""
        session = self._pool.session()
        try:
            session.send("transcribe", pcm, sample_rate)
            return _text_of(session.next_blocking(RESULT_TIMEOUT_S))
        finally:
            session.end()


class PooledSynthesizer:
    def __init__(self, pool: SpeechPool) -> None:
        self._pool = pool

    async def astream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        """PCM chunks of ``text`` as the speech process produces them; leaving early cancels the rest."""
        session, ended = self._say(text, sample_rate), False
        try:
            while (chunk := _audio_of(await session.next(RESULT_TIMEOUT_S))) is not None:
                yield chunk
            ended = True
        finally:
            _close_sentence(session, ended)

    def synthesize_stream(self, text: str, sample_rate: int) -> Iterator[bytes]:
        session, ended = self._say(text, sample_rate), False
        try:
            while (chunk := _audio_of(session.next_blocking(RESULT_TIMEOUT_S))) is not None:
                yield chunk
            ended = True
        finally:
            _close_sentence(session, ended)

    def _say(self, text: str, sample_rate: int) -> _Session:
        session = self._pool.session()
        session.send("say", text, sample_rate)
        return session

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        return b"".join(self.synthesize_stream(text, sample_rate))


class _Child:
    """One speech process, its pipe, and the threads that write to and read from it."""

    def __init__(self, settings: Settings, index: int) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads and an event loop
        self._conn, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=serve, args=(child_end, settings), name=f"kefu-speech-{index}",
                                       daemon=True)
        self.process.start()
        child_end.close()
        self.sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.alive = True
        self._ready = threading.Event()
        threading.Thread(target=self._write, name=f"speech-{index}-writer", daemon=True).start()
        threading.Thread(target=self._read, name=f"speech-{index}-reader", daemon=True).start()

    @property
    def load(self) -> int:
        return len(self.sessions)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def open(self, sid: int) -> _Session:
        session = _Session(self, sid)
        with self._lock:
            if not self.alive:
                raise SpeechError("the speech process is not running")
            self.sessions[sid] = session
        return session

    def forget(self, sid: int) -> None:
        with self._lock:
            self.sessions.pop(sid, None)

    def send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def stop(self) -> None:
        self._outbox.put(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone; the reader fails the sessions
                return
        self._conn.close()

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                self._ready.set()
                continue
            with self._lock:
                session = self.sessions.get(message[1])
            if session is not None:
                session.deliver(message)
        with self._lock:
            self.alive = False
            orphans = list(self.sessions.values())
            self.sessions.clear()
        self._ready.set()
        self.process.join(1)
        reason = f"the speech process exited (code {self.process.exitcode})"
        if orphans:
            log.error("%s with %d utterances or sentences open; they fail", reason, len(orphans))
        for session in orphans:
            session.deliver(("error", session.sid, reason))


class SpeechPool:
    """``processes`` speech processes for one gateway (see the module docstring)."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self._settings, self.size = settings, max(1, processes)
        self._children: list[_Child | None] = [None] * self.size
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._recognizer, self._synthesizer = PooledRecognizer(self), PooledSynthesizer(self)

    def get(self) -> tuple[PooledRecognizer, PooledSynthesizer]:
        return self._recognizer, self._synthesizer

    def recognizer(self) -> PooledRecognizer:
        return self._recognizer

    def synthesizer(self) -> PooledSynthesizer:
        return self._synthesizer

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start every process and wait until each has loaded its models (blocking; call it on a thread)."""
        with self._lock:
            children = [self._child(i) for i in range(self.size)]
        for child in children:
            if not child.wait_ready(timeout):
                log.warning("a speech process did not load its models within %.0f s", timeout)

    def stop(self) -> None:
        with self._lock:
            children, self._children = self._children, [None] * self.size
        for child in children:
            if child is not None:
                child.stop()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c is not None and c.process.pid is not None]

    def session(self) -> _Session:
        with self._lock:
            index = min(range(self.size), key=lambda i: self._load(i))
            child = self._child(index)
        return child.open(next(self._ids))

    def _load(self, index: int) -> int:
        child = self._children[index]
        return -1 if child is None or not child.alive else child.load

    def _child(self, index: int) -> _Child:
        child = self._children[index]
        if child is None or not child.alive:
            if child is not None:
                log.warning("speech process %d exited (code %s); starting another", index, child.process.exitcode)
            child = self._children[index] = _Child(self._settings, index)
        return child


# ---- the speech process ---------------------------------------------------------------------------------

def serve(conn: Connection, settings: Settings) -> None:
    """A speech process's main loop: build the providers, then serve requests until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the gateway, which stops us
    from models.infra import logs
    from models.privacy import install_log_masking

    install_log_masking()
    logs.configure(settings.log_level, settings.log_format)
    _Server(conn, settings).run()


class _Server:
    def __init__(self, conn: Connection, settings: Settings) -> None:
        from channels.speech.providers import SpeechProviders
        from models.infra.kv import make_kv
        from models.infra.locks import make_locks

        self._conn = conn
        self._send_lock = threading.Lock()
        self._providers = SpeechProviders(settings, make_kv(settings), make_locks(settings))
        self._streams: dict[int, Any] = {}
        self._saying: set[int] = set()  # sentences being synthesized
        self._cancelled: set[int] = set()

    def run(self) -> None:
        for build in (self._providers.recognizer, self._providers.synthesizer):
            try:  # load the models now, not on the first caller's first word
                build()
            except Exception as exc:  # each request reports it again, to the call that needs it
                log.error("speech process: %s: %s", type(exc).__name__, exc)
        self._send(("ready",))
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return
            try:
                self._handle(message)
            except Exception as exc:
                log.exception("speech process: %s failed", message[0])
                self._send(("error", message[1], f"{type(exc).__name__}: {exc}"))

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                pass  # the gateway is gone; run() ends at the next recv

    def _handle(self, message: tuple[Any, ...]) -> None:
        op, sid, *args = message
        if op == "feed":
            stream = self._streams.get(sid)
            if stream is not None:
                stream.feed(args[0])
        elif op == "begin":
            self._streams[sid] = self._begin(int(args[0]))
        elif op == "finish":
            stream = self._streams.pop(sid, None)
            if stream is None:
                self._send(("error", sid, "no utterance was begun"))
                return
            stream.close()
            threading.Thread(target=self._finish, args=(sid, stream), daemon=True).start()
        elif op == "transcribe":
            threading.Thread(target=self._transcribe, args=(sid, args[0], int(args[1])), daemon=True).start()
        elif op == "close":
            stream = self._streams.pop(sid, None)
            if stream is not None:
                stream.close()
        elif op == "say":
            self._saying.add(sid)
            threading.Thread(target=self._say, args=(sid, str(args[0]), int(args[1])), daemon=True).start()
        elif op == "cancel" and sid in self._saying:
            self._cancelled.add(sid)

    def _begin(self, rate: int) -> Any:
        recognizer = self._providers.recognizer()
        begin = getattr(recognizer, "begin", None)
        return begin(rate) if begin is not None else _Buffered(recognizer, rate)

    def _finish(self, sid: int, stream: Any) -> None:
        try:
            self._send(("text", sid, stream.finish(RESULT_TIMEOUT_S)))
        except SpeechError as exc:
            self._send(("error", sid, str(exc)))

    def _transcribe(self, sid: int, pcm: bytes, rate: int) -> None:
        try:
            self._send(("text", sid, self._providers.recognizer().transcribe(pcm, rate)))
        except SpeechError as exc:
            self._send(("error", sid, str(exc)))

    def _say(self, sid: int, text: str, rate: int) -> None:
        try:
            for chunk in speech_chunks(self._providers.synthesizer(), text, rate):
                if sid in self._cancelled:
                    break
                if chunk:
                    self._send(("audio", sid, chunk))
            self._send(("done", sid))
        except Exception as exc:
            self._send(("error", sid, f"{type(exc).__name__}: {exc}" if not isinstance(exc, SpeechError)
                        else str(exc)))
        finally:
            self._saying.discard(sid)
            self._cancelled.discard(sid)


class _Buffered:
    """A recognizer without streaming (REST, sherpa-onnx offline): the frames are kept, the clip recognized at
    the end."""

    def __init__(self, recognizer: Any, rate: int) -> None:
        self._recognizer, self._rate = recognizer, rate
        self._audio = bytearray()

    def feed(self, pcm: bytes) -> None:
        self._audio += pcm

    def close(self) -> None:
        pass

    def finish(self, timeout: float) -> str:
        return str(self._recognizer.transcribe(bytes(self._audio), self._rate))
