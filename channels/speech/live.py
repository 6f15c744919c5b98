"""Speech on an event loop: the asyncio faces of any recognizer's transcription and any synthesizer.

A call runs on the gateway's event loop and must never wait there for speech. These two functions take
whatever the configured providers offer, best first:

- :func:`transcript`: an ``await result()`` (a speech process's transcription), else ``finish()`` on a
  worker thread (an in-process recognizer's).
- :func:`synthesis_chunks`: ``astream`` (a speech process streams audio back), else
  :func:`~channels.speech.base.speech_chunks` (``synthesize_stream`` or ``synthesize``) iterated on a thread.
  Leaving the iteration early (barge-in) stops the synthesis.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from channels.speech.base import speech_chunks

_END = object()


async def transcript(stream: Any) -> str:
    result = getattr(stream, "result", None)
    if result is not None:
        return str(await result())
    return str(await run_in_threadpool(stream.finish))


async def synthesis_chunks(tts: Any, text: str, sample_rate: int) -> AsyncIterator[bytes]:
    astream = getattr(tts, "astream", None)
    if astream is not None:
        async for chunk in astream(text, sample_rate):
            yield chunk
        return
    async for chunk in _threaded(speech_chunks(tts, text, sample_rate)):
        yield chunk


async def _threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, produced on a thread and handed to the event loop one by one."""
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(handed.put_nowait, chunk)
        except BaseException as exc:  # re-raised on the event loop, where the call handles it
            loop.call_soon_threadsafe(handed.put_nowait, exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            try:
                loop.call_soon_threadsafe(handed.put_nowait, _END)
            except RuntimeError:  # the loop closed meanwhile
                pass

    threading.Thread(target=produce, name="synthesis", daemon=True).start()
    try:
        while (item := await handed.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
