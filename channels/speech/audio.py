"""PCM helpers: resampling (one-shot and streamed), WAV reading, with numpy (no audioop: it is gone in Python 3.13).

Resampling is linear interpolation (enough for speech) at the source positions ``k * source / target``:
:func:`resample` and :class:`StreamResampler` use the same positions, so audio resampled chunk by chunk
equals audio resampled in one piece (to within rounding), without a click at any chunk boundary.
"""

from __future__ import annotations

import io
import wave

import numpy as np

from channels.speech.base import SpeechError

RECOGNITION_RATES = (8000, 16000)  # the rates a cloud recognizer's models are built for (Aliyun NLS: 8k or 16k)


def recognition_rate(native_rate: int, configured: int | None) -> int:
    """The rate to send audio to a recognizer at: ``configured`` when set, else the audio's own when it is one
    of :data:`RECOGNITION_RATES`, else 16 kHz above 8 kHz and 8 kHz below (never upsample telephone audio
    unasked: Aliyun's guidance is to send 8 kHz to an 8 kHz model rather than upsample it)."""
    if configured is not None:
        return configured
    if native_rate in RECOGNITION_RATES:
        return native_rate
    return 16000 if native_rate > 8000 else 8000


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)


def _pcm(values: np.ndarray) -> bytes:
    return np.clip(np.round(values), -32768, 32767).astype("<i2").tobytes()


def _output_count(input_count: int, source_rate: int, target_rate: int) -> int:
    return max(1, round(input_count * target_rate / source_rate)) if input_count else 0


def resample(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """16-bit mono PCM from one sample rate to another (linear interpolation)."""
    if source_rate == target_rate or not pcm:
        return pcm
    samples = _samples(pcm)
    positions = np.arange(_output_count(len(samples), source_rate, target_rate)) * source_rate / target_rate
    return _pcm(np.interp(positions, np.arange(len(samples)), samples))


class StreamResampler:
    """:func:`resample` for audio that arrives in chunks: :meth:`feed` each chunk, :meth:`flush` at the end.

    It keeps the input samples not yet interpolated past and the count of samples in and out, so output ``k`` is
    always interpolated at source position ``k * source / target`` whatever the chunking; an odd trailing byte
    waits for the next chunk. ``feed`` returns the samples that can be computed so far (possibly none).
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate, self.target_rate = source_rate, target_rate
        self._odd = b""  # a trailing half sample
        self._held: np.ndarray = np.empty(0)  # the input samples the next outputs still interpolate between
        self._inputs = 0  # samples fed
        self._outputs = 0  # samples returned

    def feed(self, pcm: bytes) -> bytes:
        pcm = self._odd + pcm
        self._odd = pcm[len(pcm) - len(pcm) % 2:]
        if self.source_rate == self.target_rate:
            return pcm[: len(pcm) - len(self._odd)]
        new = _samples(pcm)
        if not len(new):
            return b""
        window = np.concatenate([self._held, new])
        offset = self._inputs - len(self._held)  # the input index of window[0]
        self._inputs += len(new)
        # every output whose position lies within what has arrived (k * source / target <= inputs - 1), but
        # never more than resample() would return for this much input: the total must not depend on the chunks
        end = min((self._inputs - 1) * self.target_rate // self.source_rate + 1,
                  _output_count(self._inputs, self.source_rate, self.target_rate))
        out = self._emit(window, offset, end)
        keep_from = min(self._outputs * self.source_rate // self.target_rate, self._inputs - 1)  # the next one's left
        self._held = window[keep_from - offset:]
        return out

    def flush(self) -> bytes:
        """The last samples (held at the final input sample), so the total matches :func:`resample`'s length."""
        if self.source_rate == self.target_rate or not self._inputs:
            return b""
        return self._emit(self._held, self._inputs - len(self._held),
                          _output_count(self._inputs, self.source_rate, self.target_rate))

    def _emit(self, window: np.ndarray, offset: int, end: int) -> bytes:
        if end <= self._outputs:
            return b""
        positions = np.arange(self._outputs, end) * self.source_rate / self.target_rate - offset
        self._outputs = end
        return _pcm(np.interp(positions, np.arange(len(window)), window))


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
