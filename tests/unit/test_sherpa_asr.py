"""The sherpa-onnx recognizer on the real library, with tiny random-weight models built at test time
(tests/sherpa_model.py): each layout loads and transcribes espeak-ng speech, threads share one recognizer,
and a broken model directory gives the operator a SpeechError that says what was expected where.

Random weights recognize nothing, so a transcript is checked for what the pipeline guarantees: a
non-empty string spelled with symbols from tokens.txt, the same every time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnx
import pytest

from channels.speech.base import SpeechError
from channels.speech.espeak import EspeakSynthesizer
from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer
from channels.speech.providers import local_recognizer
from channels.speech.sherpa_asr import SherpaOnnxRecognizer
from models.settings import Settings
from tests.sherpa_model import (
    SYMBOLS,
    build_nemo_ctc,
    build_paraformer,
    build_sense_voice,
    build_transducer,
    write_tokens,
)

BUILDERS: dict[str, Callable[[Path], Any]] = {
    "paraformer": build_paraformer,
    "sense_voice": build_sense_voice,
    "transducer": build_transducer,
    "nemo_ctc": build_nemo_ctc,
}
RATES = (8000, 16000)


@pytest.fixture(scope="module")
def speech() -> dict[int, bytes]:
    tts = EspeakSynthesizer()
    return {rate: tts.synthesize("您好，我想查一下我的订单。", rate) for rate in RATES}


def model(model_dir: Path, kind: str = "paraformer") -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    write_tokens(model_dir)
    BUILDERS[kind](model_dir)
    return model_dir


def spelled_with(text: str, symbols: list[str]) -> bool:
    """``text`` (spaces aside) is a concatenation of ``symbols``."""
    text = text.replace(" ", "")
    reachable = [True] + [False] * len(text)
    for end in range(1, len(text) + 1):
        reachable[end] = any(reachable[end - len(s)] and text.endswith(s, 0, end) for s in symbols if len(s) <= end)
    return reachable[-1]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_each_layout_loads_and_transcribes_speech(tmp_path: Path, speech: dict[int, bytes], kind: str) -> None:
    asr = SherpaOnnxRecognizer(model(tmp_path, kind))
    assert asr.kind == kind
    for rate in RATES:  # the phone's 8 kHz is resampled to the model's 16 kHz
        text = asr.transcribe(speech[rate], rate)
        assert isinstance(text, str) and text
        assert spelled_with(text, SYMBOLS), text
        assert asr.transcribe(speech[rate], rate) == text
    assert asr.transcribe(b"", 8000) == ""


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_threads_share_one_recognizer(tmp_path: Path, speech: dict[int, bytes], kind: str) -> None:
    asr = SherpaOnnxRecognizer(model(tmp_path, kind))
    audio = {rate: pcm * 4 for rate, pcm in speech.items()}  # longer decodes overlap more
    expected = {rate: asr.transcribe(audio[rate], rate) for rate in RATES}
    jobs = [RATES[i % 2] for i in range(8)]
    start = threading.Barrier(len(jobs))

    def transcribe(rate: int) -> str:
        start.wait(timeout=60)  # all decode at once, not one after another
        return asr.transcribe(audio[rate], rate)

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(transcribe, jobs)) == [expected[rate] for rate in jobs]


def test_the_int8_file_is_preferred_to_the_float_one(tmp_path: Path, speech: dict[int, bytes]) -> None:
    def heard(files: dict[str, int]) -> str:  # file name → seed of its weights
        model_dir = tmp_path / "-".join(files)
        model_dir.mkdir()
        write_tokens(model_dir)
        for filename, seed in files.items():
            build_paraformer(model_dir, seed=seed, filename=filename)
        return SherpaOnnxRecognizer(model_dir).transcribe(speech[16000], 16000)

    int8, float32 = heard({"model.int8.onnx": 0}), heard({"model.onnx": 7})
    assert int8 != float32  # other weights, another transcript: the next line can tell which file was loaded
    assert heard({"model.int8.onnx": 0, "model.onnx": 7}) == int8


def test_two_candidates_for_one_file_are_refused(tmp_path: Path) -> None:
    write_tokens(tmp_path)
    build_transducer(tmp_path, suffix="-epoch-99-avg-1.onnx")
    build_transducer(tmp_path, suffix="-epoch-30-avg-5.onnx")
    with pytest.raises(SpeechError, match=r"several candidates for one model file \(encoder-epoch-30-avg-5.onnx, "):
        SherpaOnnxRecognizer(tmp_path)


def test_a_missing_directory_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(SpeechError, match=r"nowhere is not a directory \(expected tokens.txt and either model.onnx"):
        SherpaOnnxRecognizer(tmp_path / "nowhere")


def test_an_unknown_layout_lists_what_is_there_and_what_was_expected(tmp_path: Path) -> None:
    write_tokens(tmp_path)
    build_paraformer(tmp_path, filename="tiny-encoder.onnx")  # a whisper-style name
    with pytest.raises(SpeechError, match=r"no sherpa-onnx model layout recognized in .*tiny-encoder.onnx.*"
                                          r"encoder\*.onnx \+ decoder\*.onnx \+ joiner\*.onnx"):
        SherpaOnnxRecognizer(tmp_path)


def test_a_transducer_without_its_joiner_is_named(tmp_path: Path) -> None:
    write_tokens(tmp_path)
    build_transducer(tmp_path)
    next(tmp_path.glob("joiner*.onnx")).unlink()
    with pytest.raises(SpeechError, match=r"has encoder\*.onnx \+ decoder\*.onnx but not all of"):
        SherpaOnnxRecognizer(tmp_path)


def test_a_missing_tokens_file_is_named(tmp_path: Path) -> None:
    build_paraformer(tmp_path)
    with pytest.raises(SpeechError, match=rf"{tmp_path / 'tokens.txt'} is missing: the model's symbol table"):
        SherpaOnnxRecognizer(tmp_path)


def test_a_malformed_tokens_line_is_refused_before_sherpa_onnx_exits_on_it(tmp_path: Path) -> None:
    build_paraformer(tmp_path)
    (tmp_path / "tokens.txt").write_text("<blank> 0\n<s> 1\nnot a token line\n", encoding="utf-8")
    with pytest.raises(SpeechError, match=r"tokens.txt line 3 is not 'symbol id'"):
        SherpaOnnxRecognizer(tmp_path)


def test_missing_metadata_is_refused_before_sherpa_onnx_exits_on_it(tmp_path: Path) -> None:
    path = model(tmp_path) / "model.int8.onnx"
    edited = onnx.load(str(path))
    kept = [p for p in edited.metadata_props if p.key != "lfr_window_size"]
    del edited.metadata_props[:]
    edited.metadata_props.extend(kept)
    onnx.save(edited, str(path))
    with pytest.raises(SpeechError, match=r"model.int8.onnx lacks lfr_window_size in its ONNX metadata"):
        SherpaOnnxRecognizer(tmp_path)


@pytest.mark.parametrize("model_type", ["whisper-tiny", None])
def test_a_single_model_of_an_unknown_kind_is_refused(tmp_path: Path, model_type: str | None) -> None:
    path = model(tmp_path) / "model.int8.onnx"
    edited = onnx.load(str(path))
    kept = [p for p in edited.metadata_props if p.key != "model_type"]
    del edited.metadata_props[:]
    edited.metadata_props.extend(kept)
    if model_type is not None:
        onnx.helper.set_model_props(edited, {p.key: p.value for p in kept} | {"model_type": model_type})
    onnx.save(edited, str(path))
    said = f"model_type '{model_type}'" if model_type else "no model_type"
    with pytest.raises(SpeechError, match=rf"has {said} in its ONNX metadata; .* one of .*paraformer"):
        SherpaOnnxRecognizer(tmp_path)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    write_tokens(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"<html>404 Not Found</html>\n")  # a failed download
    with pytest.raises(SpeechError, match=r"model.onnx"):
        SherpaOnnxRecognizer(tmp_path)


def test_a_tokens_file_from_another_model_fails_the_decode(tmp_path: Path, speech: dict[int, bytes]) -> None:
    build_paraformer(tmp_path)
    write_tokens(tmp_path, SYMBOLS[:4])  # the network has 16 outputs
    asr = SherpaOnnxRecognizer(tmp_path)
    with pytest.raises(SpeechError, match=r"token id that tokens.txt lacks"):
        asr.transcribe(speech[16000], 16000)


def test_without_sherpa_onnx_the_package_to_install_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sherpa_onnx", None)  # what an environment without the package imports
    with pytest.raises(SpeechError, match=r"needs sherpa-onnx, which is not installed \(pip install sherpa-onnx\)"):
        SherpaOnnxRecognizer(model(tmp_path))


def test_the_settings_choose_the_local_recognizer(clean_env: Path, tmp_path: Path) -> None:
    model_dir = model(tmp_path / "asr")
    chosen = local_recognizer(Settings(data_dir=clean_env / "data", local_asr_model_dir=model_dir))
    assert isinstance(chosen, SherpaOnnxRecognizer) and chosen.kind == "paraformer"
    assert isinstance(local_recognizer(Settings(data_dir=clean_env / "data")), PocketSphinxRecognizer)
