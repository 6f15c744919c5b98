"""pocketsphinx's pruning: CPU per second of speech (real-time factor) and the text, per decoder setting.

The six English phone questions of ``bench.phone_latency`` spoken by espeak-ng at 8 kHz, resampled to 16 kHz
and fed in 20 ms frames as a call feeds them (``full_utt=False``), through one decoder per setting. Prints one
line per setting: the real-time factor (process CPU seconds / audio seconds) and the six transcripts.

Usage: python -m bench.pocketsphinx_pruning
"""

from __future__ import annotations

import time
from typing import Any

from pocketsphinx import Decoder

from bench.phone_latency import QUESTIONS
from channels.speech.audio import resample
from channels.speech.espeak import EspeakSynthesizer
from channels.speech.pocketsphinx_asr import DECODER_OPTIONS, MODEL_RATE

BASE: dict[str, Any] = {"samprate": MODEL_RATE, "loglevel": "FATAL", "fwdflat": False}
SETTINGS: dict[str, dict[str, Any]] = {
    "pocketsphinx defaults": {},
    "kefu (DECODER_OPTIONS)": {k: v for k, v in DECODER_OPTIONS.items() if k not in BASE},
    "narrow beams": {"beam": 1e-35, "wbeam": 1e-25, "maxhmmpf": 8000},
    "topn=2": {"topn": 2, "maxhmmpf": 5000},
    "very narrow beams": {"beam": 1e-30, "wbeam": 1e-20, "pbeam": 1e-30},
}


def main() -> None:
    tts = EspeakSynthesizer()
    clips = [resample(tts.synthesize(q, 8000), 8000, MODEL_RATE) for q in QUESTIONS]
    seconds = sum(len(c) for c in clips) / (2 * MODEL_RATE)
    for name, options in SETTINGS.items():
        decoder = Decoder(**BASE, **options)
        started, texts = time.process_time(), []
        for clip in clips:
            decoder.start_utt()
            for i in range(0, len(clip), 640):
                decoder.process_raw(clip[i : i + 640], full_utt=False)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            texts.append(hypothesis.hypstr if hypothesis is not None else "")
        print(f"{name}: RTF {(time.process_time() - started) / seconds:.3f} {texts}")


if __name__ == "__main__":
    main()
