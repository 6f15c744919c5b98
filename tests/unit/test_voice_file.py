"""WeChat voice files decode to the speech they hold: AMR-NB, AMR-WB and SILK v3 made from espeak-ng speech
with the reference encoders, decoded by ffmpeg and the SILK SDK in child processes."""

from __future__ import annotations

import subprocess

import pytest

from channels.speech.espeak import EspeakSynthesizer
from channels.speech.voice_file import DecoderUnavailable, VoiceFileError, check_silk, decode, sniff
from tests import voice_files

PHRASE = "hello, I would like to speak to an agent"


@pytest.fixture(scope="module")
def speech() -> dict[int, bytes]:
    tts = EspeakSynthesizer()
    return {rate: tts.synthesize(PHRASE, rate) for rate in (8000, 16000)}


def assert_same_speech(decoded: bytes, rate: int, source: bytes, source_rate: int) -> None:
    """Same length (within two 20 ms frames of codec padding) and about the same loudness as the source."""
    seconds, source_seconds = len(decoded) / (2 * rate), len(source) / (2 * source_rate)
    assert abs(seconds - source_seconds) <= 0.04, (seconds, source_seconds)
    assert abs(voice_files.rms_dbfs(decoded) - voice_files.rms_dbfs(source)) < 3.0
    assert voice_files.rms_dbfs(decoded) > -35


def test_amr_nb_decodes_to_8_khz_speech(speech: dict[int, bytes]) -> None:
    amr = voice_files.amr_nb(speech[8000])
    assert amr.startswith(b"#!AMR\n") and sniff(amr) == "amr-nb"
    voice = decode(amr)
    assert (voice.format, voice.sample_rate) == ("amr-nb", 8000)
    assert_same_speech(voice.pcm, 8000, speech[8000], 8000)
    assert 2.0 < voice.duration_s < 4.0


def test_amr_wb_decodes_to_16_khz_speech(speech: dict[int, bytes]) -> None:
    amr = voice_files.amr_wb(speech[16000])
    assert amr.startswith(b"#!AMR-WB\n") and sniff(amr) == "amr-wb"
    voice = decode(amr)
    assert (voice.format, voice.sample_rate) == ("amr-wb", 16000)
    assert_same_speech(voice.pcm, 16000, speech[16000], 16000)


@pytest.mark.parametrize("tencent", [True, False], ids=["wechat-0x02", "plain"])
def test_silk_decodes_to_16_khz_speech_with_or_without_wechats_leading_byte(speech: dict[int, bytes],
                                                                            tencent: bool) -> None:
    silk = voice_files.silk(speech[16000], 16000, tencent=tencent)
    assert silk.startswith(b"\x02#!SILK_V3" if tencent else b"#!SILK_V3") and sniff(silk) == "silk"
    voice = decode(silk)
    assert (voice.format, voice.sample_rate) == ("silk", 16000)
    assert_same_speech(voice.pcm, 16000, speech[16000], 16000)


def test_ogg_speex_decodes_through_ffmpeg(speech: dict[int, bytes]) -> None:
    ogg = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", "16000", "-ac", "1",
                          "-i", "-", "-c:a", "libspeex", "-f", "ogg", "-"],
                         input=speech[16000], capture_output=True, check=True, timeout=30).stdout
    voice = decode(ogg)
    assert (voice.format, voice.sample_rate) == ("ogg", 16000)
    assert abs(voice.duration_s - len(speech[16000]) / 32000) < 0.1 and voice_files.rms_dbfs(voice.pcm) > -35


def test_a_long_voice_is_cut_at_max_seconds(speech: dict[int, bytes]) -> None:
    voice = decode(voice_files.amr_nb(speech[8000]), max_seconds=1.0)
    assert voice.duration_s == pytest.approx(1.0, abs=0.02)
    silk = decode(voice_files.silk(speech[16000], 16000), max_seconds=1.0)
    assert silk.duration_s == pytest.approx(1.0, abs=0.001)


@pytest.mark.parametrize(("data", "message"), [
    (b"<html>502 Bad Gateway</html>", "not a voice file"),
    (b"", "not a voice file"),
    (b"#!AMR\n", "holds no audio"),
    (b"#!AMR\n" + bytes(range(256)) * 3, "ffmpeg could not decode"),
    (b"#!SILK_V3", "holds no frames"),
    (b"\x02#!SILK_V3\x04\x00\xff\xff\xff\xff\x04\x00", "frame 2 claims"),
    (b"\x02#!SILK_V3" + b"\xff" * 40, "frame 1 claims -1 bytes"),
    (b"OggS" + bytes(60), "ffmpeg could not decode"),
])
def test_garbage_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(VoiceFileError, match=message):
        decode(data)


def test_a_decoder_that_crashes_is_an_error_not_a_dead_worker() -> None:
    # Some malformed SILK files crash the SILK library (memory corruption, so not on every run): a child
    # process that dies of a signal stands in for it deterministically.
    import sys

    from channels.speech.voice_file import _run

    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(VoiceFileError, match=r"the SILK decoder could not decode the file: crashed \(signal 11\)"):
        _run(crash, b"#!SILK_V3", 10, "the SILK decoder")


def test_silk_frames_are_checked_before_the_decoder_sees_them() -> None:
    assert check_silk(b"\x02#!SILK_V3\x02\x00ab\x01\x00c\xff\xff") == b"#!SILK_V3\x02\x00ab\x01\x00c"
    assert check_silk(b"#!SILK_V3\x02\x00ab\x01\x00c", max_frames=1) == b"#!SILK_V3\x02\x00ab"
    with pytest.raises(VoiceFileError, match="frame 2 claims 9 bytes"):
        check_silk(b"#!SILK_V3\x02\x00ab\x09\x00c")  # runs past the end of the file


def test_a_missing_ffmpeg_is_named_with_its_package(speech: dict[int, bytes]) -> None:
    with pytest.raises(DecoderUnavailable, match="apt-get install ffmpeg"):
        decode(voice_files.amr_nb(speech[8000]), ffmpeg="kefu-no-such-ffmpeg")
