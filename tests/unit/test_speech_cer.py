"""bench/speech_cer.py: the CER it reports, its set, and its refusal to measure nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import speech_cer
from tests.sherpa_model import build_paraformer, write_tokens


def test_cer_counts_character_edits_without_punctuation_or_spaces() -> None:
    assert speech_cer.normalize("我要 转人工。OK!") == "我要转人工ok"
    assert speech_cer.distance("我要转人工", "我要转人工") == 0
    assert speech_cer.distance("我要转人工", "我转人公") == 2  # one deletion, one substitution
    assert speech_cer.distance("人工", "人工客服") == 2
    score = speech_cer.Score()
    score.add("我要转人工。", "我要转 人工", 1.0, 0.1)
    score.add("查询订单", "查询", 1.0, 0.3)
    assert (score.edits, score.chars) == (2, 9) and score.cer == pytest.approx(2 / 9)
    assert score.rtf == pytest.approx(0.2) and score.errors == [("查询订单", "查询")]


def test_the_set_is_real_chinese_phrases_in_a_fixed_order() -> None:
    found = speech_cer.phrases(60)
    assert len(found) == 60 and len(set(found)) == 60 and "我要转人工" in found
    assert all(4 <= len(p) <= 20 and all("\u4e00" <= c <= "\u9fff" for c in p) for p in found)
    assert speech_cer.phrases(60) == found


def test_without_a_model_it_says_so_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KEFU_LOCAL_ASR_MODEL_DIR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        speech_cer.main([])
    assert stopped.value.code == 2 and "kefu speech pull" in capsys.readouterr().err


def test_it_runs_a_sherpa_model_over_the_set_and_recordings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import wave

    model = tmp_path / "model"
    model.mkdir()
    build_paraformer(model)  # random weights: the figures mean nothing, the path from audio to CER is real
    write_tokens(model)
    clips = tmp_path / "recordings"
    clips.mkdir()
    with wave.open(str(clips / "a.wav"), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes(bytes(32000))
    (clips / "a.txt").write_text("我要转人工\n", encoding="utf-8")
    assert speech_cer.main(["--model-dir", str(model), "--limit", "2", "--recordings", str(clips)]) == 0
    out = capsys.readouterr().out
    assert "sherpa-onnx paraformer model" in out
    assert "jddc-espeak       2 clips" in out and "recordings        1 clips     5 chars" in out and "all " in out
