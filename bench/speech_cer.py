"""Character error rate of the phone's speech recognizer on Mandarin (bench/data/speech/README.md: the set).

    .venv/bin/python -m bench.speech_cer [--model-dir DIR] [--recordings DIR] [--limit N] [--errors]
    .venv/bin/python -m bench.speech_cer --pocketsphinx      # the English-only default, for comparison

The recognizer is the sherpa-onnx model in ``--model-dir`` (default: ``KEFU_LOCAL_ASR_MODEL_DIR``; ``kefu speech
pull paraformer-zh-small`` installs one). Without one the bench says so and exits 2. ``--pocketsphinx`` runs the
recognizer a bare install uses instead.

The set, per source (each reported apart, then all together):

- ``jddc-espeak``: real JD.com customer messages (JDDC, tests/data/README.md), the phrases of 4-20 Chinese
  characters, spoken by espeak-ng's Mandarin voice (``cmn``) at the phone's 8 kHz. Robotic speech: a model's
  figure here is a lower bound of its quality, and a check that Mandarin gets through at all.
- ``recordings`` (``--recordings DIR``): real recordings an operator has the right to use, ``NAME.wav`` (16-bit
  mono) with its transcript in ``NAME.txt``; none ship with Kefu (none with a licence that allows it was found).

CER = character edit distance (substitutions + deletions + insertions) / reference characters, after removing
punctuation, symbols and spaces and lower-casing; digits are not rewritten (no phrase with a digit is chosen).
Real-time factor = decoding time / audio duration, one utterance at a time on one thread.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import unicodedata
import wave
from dataclasses import dataclass, field
from pathlib import Path

from channels.speech.base import Recognizer

TESTS_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SOURCES = (TESTS_DATA / "intents" / "ecom_heldout.tsv", TESTS_DATA / "handoff" / "heldout2.tsv")
PHONE_RATE = 8000
MIN_CHARS, MAX_CHARS = 4, 20


@dataclass
class Score:
    edits: int = 0
    chars: int = 0
    audio_s: float = 0.0
    decode_s: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reference: str, heard: str, audio_s: float, decode_s: float) -> None:
        ref, hyp = normalize(reference), normalize(heard)
        edits = distance(ref, hyp)
        self.edits += edits
        self.chars += len(ref)
        self.audio_s += audio_s
        self.decode_s += decode_s
        if edits:
            self.errors.append((reference, heard))

    def merge(self, other: Score) -> None:
        self.edits += other.edits
        self.chars += other.chars
        self.audio_s += other.audio_s
        self.decode_s += other.decode_s

    @property
    def cer(self) -> float:
        return self.edits / self.chars if self.chars else 0.0

    @property
    def rtf(self) -> float:
        return self.decode_s / self.audio_s if self.audio_s else 0.0


def normalize(text: str) -> str:
    """Characters that count: no punctuation (P*), symbols (S*), spaces or controls; ASCII lower-cased."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def distance(reference: str, heard: str) -> int:
    """Levenshtein distance over characters."""
    previous = list(range(len(heard) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(heard, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def phrases(limit: int) -> list[str]:
    """The set's sentences, in file order: each message split at blanks (customers send several short ones), the
    phrases of MIN_CHARS-MAX_CHARS characters that are all Chinese (no digit, Latin letter or placeholder)."""
    found: list[str] = []
    for path in SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            for phrase in line.split("\t")[-1].split():
                core = normalize(phrase)
                if (MIN_CHARS <= len(core) <= MAX_CHARS and all("\u4e00" <= c <= "\u9fff" for c in core)
                        and core not in found):
                    found.append(core)
                    if len(found) == limit:
                        return found
    return found


def recordings(directory: Path) -> list[tuple[str, bytes, int]]:
    """(transcript, 16-bit PCM, rate) for each NAME.wav with a NAME.txt beside it."""
    clips = []
    for wav_path in sorted(directory.glob("*.wav")):
        text_path = wav_path.with_suffix(".txt")
        if not text_path.is_file():
            continue
        with wave.open(str(wav_path), "rb") as clip:
            if clip.getsampwidth() != 2 or clip.getnchannels() != 1:
                raise SystemExit(f"{wav_path}: 16-bit mono WAV expected")
            clips.append((text_path.read_text(encoding="utf-8").strip(), clip.readframes(clip.getnframes()),
                          clip.getframerate()))
    return clips


def run(recognizer: Recognizer, clips: list[tuple[str, bytes, int]]) -> Score:
    score = Score()
    for reference, pcm, rate in clips:
        started = time.perf_counter()
        heard = recognizer.transcribe(pcm, rate)
        score.add(reference, heard, len(pcm) / 2 / rate, time.perf_counter() - started)
    return score


def synthesized(texts: list[str]) -> list[tuple[str, bytes, int]]:
    from channels.speech.espeak import EspeakSynthesizer

    voice = EspeakSynthesizer()
    return [(text, voice.synthesize(text, PHONE_RATE), PHONE_RATE) for text in texts]


def build_recognizer(args: argparse.Namespace) -> tuple[Recognizer, str]:
    if args.pocketsphinx:
        from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer

        return PocketSphinxRecognizer(), "pocketsphinx (English only: the default without KEFU_LOCAL_ASR_MODEL_DIR)"
    model_dir = args.model_dir or os.environ.get("KEFU_LOCAL_ASR_MODEL_DIR")
    if not model_dir:
        print("no Mandarin model to measure: give --model-dir DIR or set KEFU_LOCAL_ASR_MODEL_DIR (`kefu speech pull "
              "paraformer-zh-small` installs one and prints the line); --pocketsphinx measures the English-only "
              "default", file=sys.stderr)
        raise SystemExit(2)
    from channels.speech.sherpa_asr import SherpaOnnxRecognizer

    recognizer = SherpaOnnxRecognizer(Path(model_dir))
    return recognizer, f"sherpa-onnx {recognizer.kind} model in {model_dir}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model-dir", help="a sherpa-onnx model directory (default: KEFU_LOCAL_ASR_MODEL_DIR)")
    which.add_argument("--pocketsphinx", action="store_true", help="measure the English-only default instead")
    parser.add_argument("--recordings", type=Path, help="a directory of NAME.wav + NAME.txt real recordings")
    parser.add_argument("--limit", type=int, default=60, help="synthesized phrases (default 60)")
    parser.add_argument("--errors", action="store_true", help="print each phrase not recognized exactly")
    args = parser.parse_args(argv)
    recognizer, described = build_recognizer(args)
    sets = {"jddc-espeak": synthesized(phrases(args.limit))}
    if args.recordings is not None:
        sets["recordings"] = recordings(args.recordings)
    print(f"recognizer: {described}")
    total = Score()
    out = io.StringIO()
    for name, clips in sets.items():
        score = run(recognizer, clips)
        total.merge(score)
        print(f"{name:<14} {len(clips):>4} clips {score.chars:>5} chars  CER {score.cer:6.1%}  RTF {score.rtf:.3f}")
        for reference, heard in score.errors if args.errors else ():
            out.write(f"  {name}: {reference} -> {heard!r}\n")
    print(f"{'all':<14} {sum(len(c) for c in sets.values()):>4} clips {total.chars:>5} chars  CER {total.cer:6.1%}  "
          f"RTF {total.rtf:.3f}")
    sys.stdout.write(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
