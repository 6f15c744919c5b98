"""The Mandarin speech-recognition models ``kefu speech pull NAME`` knows: sherpa-onnx exports published on the
k2-fsa/sherpa-onnx GitHub release ``asr-models`` (one ``.tar.bz2`` each, a directory with ``model.int8.onnx`` and
``tokens.txt`` inside, the layout :mod:`channels.speech.sherpa_asr` loads). Data only.

Sizes are the archives' as published (shown before a download, and as its total when a server sends no
length); they are not checked, since the release's assets have been replaced before. What is checked is the
unpacked layout (:mod:`channels.speech.model_pull`).
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE = "https://github.com/k2-fsa/sherpa-onnx/releases/download/asr-models/"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    name: str  # kefu speech pull NAME; also the directory under <data_dir>/speech/
    archive: str  # the asset's file name in the release
    size: int  # bytes, as published
    kind: str  # the sherpa-onnx layout (sherpa_asr: paraformer, sense_voice)
    languages: str
    note: str

    @property
    def url(self) -> str:
        return RELEASE + self.archive


MODELS: tuple[CatalogModel, ...] = (
    CatalogModel("paraformer-zh-small", "sherpa-onnx-paraformer-zh-small-2024-03-09.tar.bz2", 77_920_048,
                 "paraformer", "Mandarin (and English words)",
                 "FunASR Paraformer, small int8 export: the fastest on a CPU; no punctuation"),
    CatalogModel("sense-voice-int8", "sherpa-onnx-sense-voice-zh-en-ja-ko-yue-int8-2024-07-17.tar.bz2", 163_002_883,
                 "sense_voice", "Mandarin, Cantonese, English, Japanese, Korean",
                 "FunASR SenseVoice Small, int8: punctuation and digits (inverse text normalization)"),
)

CATALOG: dict[str, CatalogModel] = {m.name: m for m in MODELS}
