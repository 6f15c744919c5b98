"""Voice-activity detection and endpointing on 16-bit PCM frames. Pure (numpy only).

An energy detector with an adaptive noise floor: a 20 ms frame is speech when its level is at
least ``margin_db`` above the floor (and above ``min_level_dbfs``). The floor starts at the first
frame's level (a call opens on line noise) and then follows the quiet frames: quickly down,
slowly up. When even the quietest frame of the last ``floor_window_ms`` counts as speech, the line
got noisier (speech always has dips between words): the floor jumps to that level, so a call that
opened on digital silence and then picked up hiss does not stay "in speech" for ever. The
:class:`Endpointer` turns that into utterances:

- speech starts after ``start_ms`` of consecutive speech frames (a click or a cough shorter than
  that is ignored); :class:`SpeechStarted` is emitted then — the moment barge-in is detected;
- the utterance ends after ``silence_ms`` of non-speech (600 ms by default), or at ``max_ms``;
  :class:`UtteranceEnded` carries its audio (with ``pre_roll_ms`` of audio from before the start,
  so a recognizer hears the first syllable).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    at_ms: int  # call time of the first speech frame


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    pcm: bytes
    started_ms: int
    ended_ms: int  # call time of the last speech frame's end


def level_dbfs(pcm: bytes) -> float:
    """RMS level of 16-bit little-endian PCM in dB relative to full scale (-100 for silence).

    numpy, not a Python loop: the gateway measures every 20 ms frame of every call (50 a second each).
    """
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    if not samples.size:
        return -100.0
    mean_square = float(np.dot(samples, samples)) / samples.size
    return -100.0 if mean_square <= 0 else 10 * math.log10(mean_square / (32768.0 * 32768.0))


class Endpointer:
    def __init__(self, sample_rate: int, *, silence_ms: int = 600, start_ms: int = 60, max_ms: int = 15_000,
                 pre_roll_ms: int = 200, margin_db: float = 12.0, min_level_dbfs: float = -45.0,
                 floor_window_ms: int = 3000) -> None:
        self.sample_rate = sample_rate
        self.silence_ms, self.start_ms, self.max_ms = silence_ms, start_ms, max_ms
        self.margin_db, self.min_level_dbfs = margin_db, min_level_dbfs
        self.floor_dbfs: float | None = None  # the line's noise level, learned from the first frame on
        self._recent_levels: deque[float] = deque(maxlen=max(1, floor_window_ms // 20))
        self._clock_ms = 0
        self._pre: deque[tuple[bytes, bool]] = deque(maxlen=max(1, pre_roll_ms // 20 + start_ms // 20))
        self._speech_run_ms = 0
        self._silence_run_ms = 0
        self._in_speech = False
        self._utterance = bytearray()
        self._started_ms = 0
        self._last_speech_end_ms = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def utterance_so_far(self) -> bytes:
        """The audio of the utterance in progress (pre-roll included), for a streaming recognizer."""
        return bytes(self._utterance)

    def feed(self, pcm: bytes) -> list[SpeechStarted | UtteranceEnded]:
        """One frame (any length; 20 ms expected). Returns what happened at its end."""
        duration_ms = len(pcm) * 1000 // (2 * self.sample_rate)
        level = level_dbfs(pcm)
        if self.floor_dbfs is None:  # a call opens on line noise, not on speech
            self.floor_dbfs = min(level, self.min_level_dbfs)
        self._recent_levels.append(level)
        quietest = min(self._recent_levels)
        if len(self._recent_levels) == self._recent_levels.maxlen and quietest >= self.floor_dbfs + self.margin_db:
            self.floor_dbfs = quietest  # steady noise, not speech: no dip in the whole window
        speech = level >= max(self.floor_dbfs + self.margin_db, self.min_level_dbfs)
        if not speech:  # the floor follows the noise, quickly down and slowly up
            rate = 0.3 if level < self.floor_dbfs else 0.02
            self.floor_dbfs += (level - self.floor_dbfs) * rate
        self._clock_ms += duration_ms
        events: list[SpeechStarted | UtteranceEnded] = []
        if not self._in_speech:
            self._pre.append((pcm, speech))
            self._speech_run_ms = self._speech_run_ms + duration_ms if speech else 0
            if self._speech_run_ms >= self.start_ms:
                self._in_speech = True
                self._silence_run_ms = 0
                self._started_ms = self._clock_ms - self._speech_run_ms
                self._utterance = bytearray(b"".join(chunk for chunk, _ in self._pre))
                self._pre.clear()
                self._last_speech_end_ms = self._clock_ms
                events.append(SpeechStarted(self._started_ms))
            return events
        self._utterance += pcm
        if speech:
            self._silence_run_ms = 0
            self._last_speech_end_ms = self._clock_ms
        else:
            self._silence_run_ms += duration_ms
        too_long = self._clock_ms - self._started_ms >= self.max_ms
        if self._silence_run_ms >= self.silence_ms or too_long:
            events.append(UtteranceEnded(bytes(self._utterance), self._started_ms, self._last_speech_end_ms))
            self._in_speech = False
            self._speech_run_ms = 0
            self._utterance = bytearray()
        return events
