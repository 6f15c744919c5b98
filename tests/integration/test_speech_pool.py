"""The speech processes (channels/speech/pool.py) on real engines: pocketsphinx listens and espeak-ng speaks in
child processes, while the test's own process only moves audio — as the gateway does."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.speech.base import SpeechError
from channels.speech.espeak import EspeakSynthesizer
from channels.speech.live import synthesis_chunks, transcript
from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer
from channels.speech.pool import SpeechPool
from channels.telephony.events import frame_bytes
from models.settings import Settings

RATE = 8000


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechPool]:
    speech = SpeechPool(Settings(data_dir=tmp_path_factory.mktemp("speech-pool")), 2)  # type: ignore[call-arg]
    speech.start()
    yield speech
    speech.stop()


@pytest.fixture(scope="module")
def question() -> bytes:
    return EspeakSynthesizer().synthesize("hello, I would like to speak to an agent", RATE)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def recognize(pool: SpeechPool, pcm: bytes) -> str:
    stream = pool.recognizer().begin(RATE)
    size = frame_bytes(RATE)
    for i in range(0, len(pcm), size):  # frame by frame, as a call feeds it
        stream.feed(pcm[i : i + size])
    return await transcript(stream)


def test_a_streamed_utterance_gets_the_same_text_as_in_process_recognition(pool: SpeechPool, question: bytes) -> None:
    local = PocketSphinxRecognizer()
    streamed = local.begin(RATE)
    size = frame_bytes(RATE)
    for i in range(0, len(question), size):
        streamed.feed(question[i : i + size])
    expected = streamed.finish()
    assert expected  # pocketsphinx hears English words in espeak-ng's English
    assert asyncio.run(recognize(pool, question)) == expected
    # the blocking face, from a plain thread: the clip in one piece, as the in-process recognizer is given it
    assert pool.recognizer().transcribe(question, RATE) == local.transcribe(question, RATE)


def test_recognition_runs_in_the_speech_processes_not_in_the_callers_process(pool: SpeechPool,
                                                                              question: bytes) -> None:
    children = pool.pids()
    before_children, before_self = sum(cpu_seconds(p) for p in children), time.process_time()

    async def eight_at_once() -> list[str]:
        return list(await asyncio.gather(*(recognize(pool, question) for _ in range(8))))

    texts = asyncio.run(eight_at_once())
    assert len(texts) == 8 and all(texts)  # (a reused decoder's adapted CMN may change a word or two)
    spent_children = sum(cpu_seconds(p) for p in children) - before_children
    spent_self = time.process_time() - before_self
    assert spent_children > 3 * spent_self, (spent_children, spent_self)


def test_synthesis_streams_back_the_same_audio(pool: SpeechPool) -> None:
    text = "您好，欢迎致电，请问有什么可以帮您？"

    async def collect() -> list[bytes]:
        return [chunk async for chunk in synthesis_chunks(pool.synthesizer(), text, RATE)]

    chunks = asyncio.run(collect())
    local = EspeakSynthesizer().synthesize(text, RATE)
    assert chunks and abs(sum(map(len, chunks)) - len(local)) <= 0.05 * len(local)
    assert pool.synthesizer().synthesize(text, RATE)  # the blocking face


def test_a_speech_process_that_dies_fails_its_utterance_at_once_and_is_replaced(pool: SpeechPool,
                                                                                question: bytes) -> None:
    async def killed_mid_utterance() -> float:
        stream = pool.recognizer().begin(RATE)
        stream.feed(question[: len(question) // 2])
        victim = next(c for c in pool._children if c is not None and stream._session.child is c)
        os.kill(victim.process.pid or 0, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SpeechError, match="speech process exited"):
            await transcript(stream)
        return time.monotonic() - started

    waited = asyncio.run(killed_mid_utterance())
    assert waited < 10  # told when the process died, not after the 30 s result timeout
    texts = [asyncio.run(recognize(pool, question)) for _ in range(3)]  # a replacement serves the next ones
    assert all(texts) and len(pool.pids()) == 2


def test_sessions_spread_over_the_processes(pool: SpeechPool) -> None:
    async def two_open() -> set[int]:
        first, second = pool.recognizer().begin(RATE), pool.recognizer().begin(RATE)
        children = {id(first._session.child), id(second._session.child)}
        for stream in (first, second):
            stream.cancel()
        return children

    assert len(asyncio.run(two_open())) == 2
