"""Local speech providers on real engines: espeak-ng speaks, the endpointer hears it, pocketsphinx listens."""

from __future__ import annotations

import pytest

from channels.speech.audio import read_wav, resample, write_wav
from channels.speech.base import SpeechError
from channels.speech.espeak import EspeakSynthesizer
from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer
from channels.telephony.events import frame_bytes
from channels.telephony.vad import Endpointer, SpeechStarted, UtteranceEnded, level_dbfs


@pytest.fixture(scope="module")
def tts() -> EspeakSynthesizer:
    return EspeakSynthesizer()


def test_mandarin_and_english_voices_are_chosen_by_the_text(tts: EspeakSynthesizer) -> None:
    assert tts.voice_for("您好，请问有什么可以帮您？") == "cmn"
    assert tts.voice_for("How can I help you?") == "en-us"


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_is_synthesized_at_the_call_rate(tts: EspeakSynthesizer, rate: int) -> None:
    pcm = tts.synthesize("您好，欢迎致电优选商城。", rate)
    seconds = len(pcm) / (2 * rate)
    assert 1.0 < seconds < 8.0 and level_dbfs(pcm) > -40
    assert tts.synthesize("   ", rate) == b""


def test_the_endpointer_finds_one_utterance_in_synthesized_speech(tts: EspeakSynthesizer) -> None:
    rate = 8000
    speech = tts.synthesize("我想查一下我的订单。", rate)
    audio = bytes(rate // 2 * 2) + speech + bytes(rate * 2)  # 0.5 s silence, speech, 1 s silence
    endpointer = Endpointer(rate, silence_ms=600)
    events = []
    size = frame_bytes(rate)
    for i in range(0, len(audio), size):
        events += endpointer.feed(audio[i : i + size])
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]
    assert 400 <= events[0].at_ms <= 700
    speech_ms = len(speech) * 1000 // (2 * rate)
    assert isinstance(events[1], UtteranceEnded) and events[1].ended_ms <= 500 + speech_ms + 40


def test_pocketsphinx_transcribes_speech(tts: EspeakSynthesizer) -> None:
    asr = PocketSphinxRecognizer()  # (it hears words even in digital silence: only VAD utterances reach it)
    text = asr.transcribe(tts.synthesize("hello, I would like to speak to an agent", 8000), 8000)
    assert text and text.isascii()  # English words come out (how well, see docs/telephony.md)


def test_wav_round_trip_and_resampling() -> None:
    pcm = resample(bytes(range(256)) * 10, 8000, 16000)  # 1,280 samples at 8 kHz
    assert len(pcm) == 2 * 2560
    again, rate = read_wav(write_wav(pcm, 16000))
    assert (again, rate) == (pcm, 16000)
    with pytest.raises(SpeechError, match="not a WAV"):
        read_wav(b"RIFF garbage")


def test_streaming_recognition_hears_the_utterance_frame_by_frame(tts: EspeakSynthesizer) -> None:
    asr = PocketSphinxRecognizer()
    speech = tts.synthesize("hello, I would like to speak to an agent", 8000)
    stream = asr.begin(8000)
    for i in range(0, len(speech), 320):
        stream.feed(speech[i : i + 320])
    text = stream.finish()
    assert text and text.isascii()
    assert asr.idle_decoders == 1
    again = asr.begin(8000)  # the decoder went back to the pool and serves the next utterance
    again.feed(speech)
    assert again.finish() == text
    assert asr.idle_decoders == 1  # reused, not a second one built


def test_a_failed_primary_voice_is_skipped_for_the_cooldown_then_tried_again() -> None:
    from channels.speech.fallback import FallbackSynthesizer

    class Voice:
        def __init__(self, audio: bytes, fail: bool = False) -> None:
            self.audio, self.fail, self.calls = audio, fail, 0

        def synthesize(self, text: str, sample_rate: int) -> bytes:
            self.calls += 1
            if self.fail:
                raise SpeechError("NLS unreachable: ConnectError")
            return self.audio

    primary, backup = Voice(b"cloud", fail=True), Voice(b"local")
    voice = FallbackSynthesizer(primary, backup, cooldown_s=3600)
    assert [voice.synthesize("您好", 8000) for _ in range(3)] == [b"local"] * 3
    assert (primary.calls, backup.calls) == (1, 3)  # one failed try, not one per sentence
    primary.fail, voice.cooldown_s = False, 0
    voice._skip_until = 0.0  # the cooldown is over
    assert voice.synthesize("您好", 8000) == b"cloud"


def test_any_failure_inside_a_streaming_recognizer_is_a_speech_error_not_silence() -> None:
    from channels.speech.base import Transcription

    class Broken(Transcription):
        def _recognize(self) -> str:
            while self._next_frame() is not None:
                pass
            raise ConnectionError("the KV store under the token went away")

    stream = Broken(8000)
    stream.feed(bytes(320))
    stream.close()  # the end of the utterance, announced without waiting
    with pytest.raises(SpeechError, match="ConnectionError: the KV store"):
        stream.finish()
