"""Local speech recognition with sherpa-onnx (PyPI ``sherpa-onnx``) from a model directory the operator
downloads and names in ``KEFU_LOCAL_ASR_MODEL_DIR``: the way to recognize Mandarin without a cloud.

The layout is read from the files in the directory (``tokens.txt`` is always needed):

* ``encoder*.onnx`` + ``decoder*.onnx`` + ``joiner*.onnx``: a transducer (icefall zipformer/conformer,
  or NeMo when the encoder's metadata says so);
* ``model.onnx`` or ``model.int8.onnx``: one network, whose kind comes from the ``model_type`` entry of
  its ONNX metadata, as sherpa-onnx's exports write it: paraformer, SenseVoice, NeMo CTC, zipformer CTC,
  WeNet CTC, TeleSpeech CTC.

Where a file comes both as ``*.int8.onnx`` and as float ``*.onnx``, the int8 one is used (smaller and
faster on a CPU).

Guarantees: one recognizer serves every thread. Each transcription decodes its own stream; sherpa-onnx's
decoding is const over the loaded model and onnxruntime sessions may run from several threads at once,
so there is no lock. Audio is resampled to the model's 16 kHz here, like the pocketsphinx recognizer
does (sherpa-onnx would resample too, but prints a line to stderr for every utterance it resamples).

Raises :class:`~channels.speech.base.SpeechError` when sherpa-onnx is not installed, the directory is
missing, its layout is not recognized, ``tokens.txt`` or a metadata entry sherpa-onnx needs is missing
or malformed, or loading or decoding raises. Those files are checked here, before sherpa-onnx sees them,
because sherpa-onnx ends the whole process (``_Exit``) instead of raising on most of them.
Not caught: sherpa-onnx reports an onnxruntime failure *during* decoding on stderr and returns an
empty result, which reads here as "nothing recognized".
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from channels.speech.audio import resample
from channels.speech.base import SpeechError

log = logging.getLogger(__name__)

MODEL_RATE = 16000  # every sherpa-onnx offline model Kefu loads was trained on 16 kHz audio

_NEMO_CTC = ("EncDecCTCModelBPE", "EncDecCTCModel", "EncDecHybridRNNTCTCBPEModel")
_NEMO_TRANSDUCER = ("EncDecRNNTBPEModel", "EncDecHybridRNNTCTCBPEModel")

# model_type in a single network's metadata → the sherpa-onnx factory and its keyword for the model file
_SINGLE: dict[str, tuple[str, str]] = {
    "paraformer": ("from_paraformer", "paraformer"),
    "sense_voice_ctc": ("from_sense_voice", "model"),
    "zipformer2_ctc": ("from_zipformer_ctc", "model"),
    "wenet_ctc": ("from_wenet_ctc", "model"),
    "telespeech_ctc": ("from_telespeech_ctc", "model"),
    **{name: ("from_nemo_ctc", "model") for name in _NEMO_CTC},
}

# Metadata sherpa-onnx 2.0 reads without a default (sherpa-onnx/csrc/offline-*-model.cc): it exits when one is absent.
_SENSE_VOICE_LANGS = tuple(f"lang_{lang}" for lang in ("auto", "zh", "en", "ja", "ko", "yue"))
_REQUIRED: dict[str, tuple[str, ...]] = {
    "from_paraformer": ("vocab_size", "lfr_window_size", "lfr_window_shift", "neg_mean", "inv_stddev"),
    "from_sense_voice": ("vocab_size", "lfr_window_size", "lfr_window_shift", "normalize_samples"),
    "from_nemo_ctc": ("vocab_size", "subsampling_factor"),
    "from_wenet_ctc": ("vocab_size", "subsampling_factor"),
    "transducer decoder": ("vocab_size", "context_size"),
    "nemo_transducer encoder": ("vocab_size", "subsampling_factor", "pred_rnn_layers", "pred_hidden"),
}
_SENSE_VOICE_FULL = ("with_itn", "without_itn", *_SENSE_VOICE_LANGS, "neg_mean", "inv_stddev")  # all but FunASR Nano

_EXPECTED = ("expected tokens.txt and either model.onnx / model.int8.onnx (paraformer, SenseVoice, CTC) "
             "or encoder*.onnx + decoder*.onnx + joiner*.onnx (transducer)")


class SherpaOnnxRecognizer:
    """A sherpa-onnx offline model loaded from ``model_dir``; ``kind`` names the layout found (``paraformer`` ...)."""

    def __init__(self, model_dir: Path, num_threads: int = 1) -> None:
        try:
            import sherpa_onnx
        except ImportError as exc:
            raise SpeechError(f"KEFU_LOCAL_ASR_MODEL_DIR={model_dir} needs sherpa-onnx, which is not installed "
                              "(pip install sherpa-onnx)") from exc
        model_dir = Path(model_dir)
        factory, self.kind, arguments = _layout(model_dir)
        try:
            self._recognizer: Any = getattr(sherpa_onnx.OfflineRecognizer, factory)(
                **arguments, num_threads=num_threads)
        except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
            raise SpeechError(f"sherpa-onnx could not load the {self.kind} model in {model_dir}: {exc}") from None
        log.info("sherpa-onnx %s model loaded from %s", self.kind, model_dir)

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        audio = resample(pcm, sample_rate, MODEL_RATE)
        samples = np.frombuffer(audio[: len(audio) - len(audio) % 2], dtype="<i2").astype(np.float32) / 32768.0
        if not samples.size:
            return ""
        try:
            stream = self._recognizer.create_stream()
            stream.accept_waveform(MODEL_RATE, samples)
            self._recognizer.decode_stream(stream)
            return str(stream.result.text).strip()
        except IndexError:  # the symbol table lookup (std::out_of_range)
            raise SpeechError("sherpa-onnx decoded a token id that tokens.txt lacks: is tokens.txt the one "
                              "shipped with this model?") from None
        except (RuntimeError, ValueError) as exc:
            raise SpeechError(f"sherpa-onnx failed to decode: {exc}") from None


def _layout(model_dir: Path) -> tuple[str, str, dict[str, Any]]:
    """(sherpa-onnx factory, kind, its keyword arguments) for the model files in ``model_dir``."""
    if not model_dir.is_dir():
        raise SpeechError(f"KEFU_LOCAL_ASR_MODEL_DIR={model_dir} is not a directory ({_EXPECTED} in it)")
    names = sorted(p.name for p in model_dir.glob("*.onnx") if p.is_file())
    parts = {role: _pick(model_dir, [n for n in names if n.startswith(role)]) for role in ("encoder", "decoder", "joiner")}
    if all(parts.values()):
        return _transducer(model_dir, *(model_dir / str(parts[role]) for role in ("encoder", "decoder", "joiner")))
    single = _pick(model_dir, [n for n in names if n in ("model.onnx", "model.int8.onnx")])
    if single is not None:
        return _single_file(model_dir, model_dir / single)
    raise _unrecognized(model_dir, names, [f"{role}*.onnx" for role, name in parts.items() if name])


def _unrecognized(model_dir: Path, names: list[str], transducer_parts: list[str]) -> SpeechError:
    if transducer_parts:
        return SpeechError(f"{model_dir} has {' + '.join(transducer_parts)} but not all of encoder*.onnx + "
                           f"decoder*.onnx + joiner*.onnx; {_EXPECTED}")
    return SpeechError(f"no sherpa-onnx model layout recognized in {model_dir} (.onnx files there: "
                       f"{', '.join(names) or 'none'}); {_EXPECTED}")


def _transducer(model_dir: Path, encoder: Path, decoder: Path, joiner: Path) -> tuple[str, str, dict[str, Any]]:
    tokens = _tokens(model_dir)
    if _metadata(encoder).get("model_type") in _NEMO_TRANSDUCER:
        kind, checked, needed = "nemo_transducer", encoder, _REQUIRED["nemo_transducer encoder"]
    else:
        kind, checked, needed = "transducer", decoder, _REQUIRED["transducer decoder"]
    _require(checked, _metadata(checked), needed)
    return "from_transducer", kind, {"encoder": str(encoder), "decoder": str(decoder), "joiner": str(joiner),
                                     "tokens": tokens, "model_type": kind}


def _single_file(model_dir: Path, model: Path) -> tuple[str, str, dict[str, Any]]:
    tokens = _tokens(model_dir)
    metadata = _metadata(model)
    model_type = metadata.get("model_type")
    if model_type not in _SINGLE:
        said = f"model_type {model_type!r}" if model_type else "no model_type"
        raise SpeechError(f"{model} has {said} in its ONNX metadata; Kefu loads a single-file sherpa-onnx model "
                          f"whose model_type is one of {', '.join(sorted(_SINGLE))}")
    factory, keyword = _SINGLE[model_type]
    needed = _REQUIRED.get(factory, ())
    if factory == "from_sense_voice" and "Nano" not in metadata.get("comment", ""):
        needed += _SENSE_VOICE_FULL
    _require(model, metadata, needed)
    arguments: dict[str, Any] = {keyword: str(model), "tokens": tokens}
    if factory == "from_sense_voice":
        arguments["use_itn"] = True  # punctuation, and digits for numbers: order numbers read as 123, not 一二三
    return factory, factory.removeprefix("from_"), arguments


def _pick(model_dir: Path, candidates: list[str]) -> str | None:
    """The one file among ``candidates``, the int8 one when there are float and int8 versions."""
    if len(candidates) > 1:
        candidates = [n for n in candidates if n.endswith(".int8.onnx")] or candidates
    if len(candidates) > 1:
        raise SpeechError(f"{model_dir} has several candidates for one model file ({', '.join(candidates)}); "
                          "keep one (its .int8.onnx and float .onnx versions may stay together)")
    return candidates[0] if candidates else None


def _tokens(model_dir: Path) -> str:
    """The path of ``tokens.txt``, checked line by line the way sherpa-onnx reads it (it exits on a bad line)."""
    path = model_dir / "tokens.txt"
    if not path.is_file():
        raise SpeechError(f"{path} is missing: the model's symbol table ({_EXPECTED} in {model_dir})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeechError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].lstrip("-").isdigit()):
            raise SpeechError(f"{path} line {number} is not 'symbol id': {line[:60]!r}")
    if not any(line.strip() for line in lines):
        raise SpeechError(f"{path} is empty")
    return str(path)


def _require(path: Path, metadata: dict[str, str], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if not metadata.get(key)]
    if missing:
        raise SpeechError(f"{path} lacks {', '.join(missing)} in its ONNX metadata, which sherpa-onnx needs "
                          "(is it a sherpa-onnx export of that model?)")


def _metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without loading the network.

    An ONNX file is one protobuf ``ModelProto``; its metadata entries are field 14, each a message with
    key (1) and value (2). Every other field, the large graph included, is skipped with a seek.
    """
    metadata: dict[str, str] = {}
    try:
        with path.open("rb") as model:
            for _, entry in _fields(model, (14,)):
                pair = dict(_fields(io.BytesIO(entry), (1, 2)))
                metadata[pair.get(1, b"").decode()] = pair.get(2, b"").decode()
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise SpeechError(f"cannot read {path} as an ONNX model: {exc}") from None
    return metadata


def _fields(message: BinaryIO, wanted: tuple[int, ...]) -> Iterator[tuple[int, bytes]]:
    """(number, bytes) of each length-delimited protobuf field numbered in ``wanted``, in file order."""
    while (tag := _varint(message)) is not None:
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            size = _varint(message)
            if size is None:
                raise ValueError("truncated field")
            if number in wanted:
                data = message.read(size)
                if len(data) != size:
                    raise ValueError("truncated field")
                yield number, data
            else:
                message.seek(size, io.SEEK_CUR)
        elif wire_type == 0:
            _varint(message)
        elif wire_type in (1, 5):
            message.seek(8 if wire_type == 1 else 4, io.SEEK_CUR)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")


def _varint(message: BinaryIO) -> int | None:
    """A protobuf base-128 integer, or None at the end of the message."""
    value = 0
    for shift in range(0, 70, 7):
        byte = message.read(1)
        if not byte:
            if shift:
                raise ValueError("truncated varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("varint longer than 10 bytes")
