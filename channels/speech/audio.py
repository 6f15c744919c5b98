"""PCM helpers: resampling and WAV reading, with numpy (no audioop: it is gone in Python 3.13)."""

from __future__ import annotations

import io
import wave

import numpy as np

from channels.speech.base import SpeechError


def resample(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """16-bit mono PCM from one sample rate to another (linear interpolation; enough for speech)."""
    if source_rate == target_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)
    count = max(1, round(len(samples) * target_rate / source_rate))
    positions = np.linspace(0, len(samples) - 1, count)
    resampled = np.interp(positions, np.arange(len(samples)), samples)
    return np.clip(np.round(resampled), -32768, 32767).astype("<i2").tobytes()


def read_wav(data: bytes) -> tuple[bytes, int]:
    """(16-bit mono PCM, sample rate) of a WAV file's bytes."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2:
                raise SpeechError(f"expected 16-bit WAV, got {8 * wav.getsampwidth()}-bit")
            frames = wav.readframes(wav.getnframes())
            rate, channels = wav.getframerate(), wav.getnchannels()
    except (wave.Error, EOFError) as exc:
        raise SpeechError(f"not a WAV file: {exc}") from None
    if channels > 1:  # keep the first channel
        frames = np.frombuffer(frames, dtype="<i2")[::channels].tobytes()
    return frames, rate


def write_wav(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()
