"""Speech in chunks: the streamed resampler against the one-shot one, and espeak-ng read while it speaks."""

from __future__ import annotations

import random
import signal
import subprocess
import types

import numpy as np
import pytest

from channels.speech.audio import StreamResampler, read_wav, recognition_rate, resample
from channels.speech.espeak import EspeakSynthesizer

SENTENCE = "您好，欢迎致电优选商城客服中心。我们的营业时间是每天早上九点到晚上六点，请问有什么可以帮您？"


def speech_like(samples: int, seed: int) -> bytes:
    """A loud swept tone with noise: neighbouring samples differ, so a misplaced interpolation shows."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples)
    wave = 20000 * np.sin(0.0005 * t * t / 50 + 0.05 * t) + rng.integers(-800, 800, samples)
    return np.clip(wave, -32768, 32767).astype("<i2").tobytes()


def streamed(pcm: bytes, source: int, target: int, seed: int) -> tuple[bytes, int]:
    """(the audio resampled chunk by chunk, in random chunk sizes (odd byte counts too), the chunk count)."""
    rng = random.Random(seed)
    resampler, out, start, chunks = StreamResampler(source, target), [], 0, 0
    while start < len(pcm):
        size = rng.randint(1, 1500)
        out.append(resampler.feed(pcm[start:start + size]))
        start, chunks = start + size, chunks + 1
    out.append(resampler.flush())
    return b"".join(out), chunks


@pytest.mark.parametrize(("source", "target"), [(22050, 8000), (22050, 16000), (8000, 16000), (16000, 8000),
                                                (44100, 8000), (8000, 22050)])
def test_streamed_resampling_equals_resampling_in_one_piece(source: int, target: int) -> None:
    for seed, seconds in enumerate((0.01, 0.37, 1.0, 2.3)):
        pcm = speech_like(int(source * seconds), seed)
        whole = np.frombuffer(resample(pcm, source, target), dtype="<i2").astype(int)
        audio, chunks = streamed(pcm, source, target, seed)
        pieces = np.frombuffer(audio, dtype="<i2").astype(int)
        assert chunks > 1 or seconds == 0.01
        assert len(pieces) == len(whole) == max(1, round(len(pcm) // 2 * target / source))
        assert np.abs(pieces - whole).max() <= 1  # no click at a boundary: the same samples, to rounding


def test_streamed_resampling_at_the_same_rate_passes_whole_samples_through() -> None:
    resampler = StreamResampler(8000, 8000)
    assert resampler.feed(b"\x01\x02\x03") == b"\x01\x02"
    assert resampler.feed(b"\x04") == b"\x03\x04"
    assert resampler.flush() == b""


def test_recognition_goes_at_the_configured_rate_else_the_audios_own() -> None:
    assert recognition_rate(8000, None) == 8000  # a phone call to an 8 kHz telephone model: not upsampled
    assert recognition_rate(16000, None) == 16000
    assert recognition_rate(8000, 16000) == 16000  # a 16 kHz appkey model: upsampled
    assert recognition_rate(16000, 8000) == 8000
    assert recognition_rate(48000, None) == 16000 and recognition_rate(22050, None) == 16000
    assert recognition_rate(6000, None) == 8000


@pytest.fixture(scope="module")
def tts() -> EspeakSynthesizer:
    return EspeakSynthesizer()


def test_espeak_streams_a_long_sentence_in_chunks_that_add_up_to_the_whole(tts: EspeakSynthesizer) -> None:
    chunks = list(tts.synthesize_stream(SENTENCE, 8000))
    assert len(chunks) > 5 and all(chunk and len(chunk) % 2 == 0 for chunk in chunks)
    whole = tts.synthesize(SENTENCE, 8000)
    assert b"".join(chunks) == whole
    # and the same as resampling espeak-ng's own WAV in one piece (the header's placeholder sizes ignored)
    wav = subprocess.run(["espeak-ng", "-v", "cmn", "-s", "260", "--stdout", "--", SENTENCE],
                         capture_output=True, check=True, timeout=20).stdout
    assert int.from_bytes(wav[40:44], "little") > len(wav)  # the data size is a placeholder on a pipe
    pcm, rate = read_wav(wav)
    one_shot = np.frombuffer(resample(pcm, rate, 8000), dtype="<i2").astype(int)
    assert np.abs(np.frombuffer(whole, dtype="<i2").astype(int) - one_shot).max() <= 1
    assert 3.0 < len(whole) / 16000 < 15.0
    assert list(tts.synthesize_stream("  ", 8000)) == []


def test_leaving_an_espeak_stream_early_stops_espeak(tts: EspeakSynthesizer) -> None:
    stream = tts.synthesize_stream(SENTENCE * 4, 16000)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    frame = stream.gi_frame
    assert first and frame is not None
    process = frame.f_locals["process"]
    stream.close()  # the caller spoke over it (barge-in)
    assert process.poll() == -signal.SIGKILL  # killed and reaped, not left blocked on a full pipe
