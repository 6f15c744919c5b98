"""Tiny random-weight sherpa-onnx models, written at test time (test support, not a fake).

No real model can be downloaded where the tests run, so these builders write real ONNX graphs with
the inputs, outputs and metadata that sherpa-onnx's own loaders read (sherpa-onnx 2.0,
``sherpa-onnx/csrc/offline-{paraformer,sense-voice,transducer,nemo-enc-dec-ctc}-model.cc`` and the
matching ``offline-recognizer-*-impl.h``), in the directory layouts the releases ship. The weights
are random (seeded), so a model recognizes nothing: a transcript is an arbitrary but deterministic
string of symbols from ``tokens.txt``. What a test proves with them is that the real library loads
the layout and runs waveform → features → network → decoder → symbol table end to end.

The one nudge away from random: the symbol that would leave the transcript empty (paraformer's
``</s>``, which ends decoding; the blank of the CTC and transducer models) gets a large negative
bias, so speech gives a non-empty transcript and the decoder really walked the network's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ids are line numbers; the CJK symbols keep the transcript free of the spaces sherpa-onnx puts between ASCII tokens
SYMBOLS = ["<blank>", "<s>", "</s>", "你", "好", "请", "问", "转", "人", "工", "客", "服", "谢", "查", "单", "<unk>"]
FEATURE_DIM = 80  # sherpa-onnx's default fbank size for all four kinds
LFR_WINDOW, LFR_SHIFT = 7, 6  # paraformer / SenseVoice stack 7 frames every 6: 560 inputs
HIDDEN = 16
_OPSET = 17
_IR_VERSION = 8  # what the onnxruntime inside the sherpa-onnx wheel reads


def write_tokens(model_dir: Path, symbols: list[str] = SYMBOLS) -> None:
    (model_dir / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")


def build_paraformer(model_dir: Path, *, seed: int = 0, filename: str = "model.int8.onnx") -> Path:
    """As sherpa-onnx-paraformer-zh-*: speech (N, T, 560), speech_lengths → logits (N, T, vocab), token_num."""
    rng = np.random.default_rng(seed)
    width, vocab = FEATURE_DIM * LFR_WINDOW, len(SYMBOLS)
    bias = rng.normal(0, 0.1, vocab).astype(np.float32)
    bias[SYMBOLS.index("</s>")] = -1e4  # greedy search stops at the first </s>
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["speech", "w"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["scores"]),
         helper.make_node("LogSoftmax", ["scores"], ["logits"], axis=-1),
         helper.make_node("Identity", ["speech_lengths"], ["token_num"])],
        "paraformer",
        [_tensor("speech", TensorProto.FLOAT, ["N", "T", width]), _tensor("speech_lengths", TensorProto.INT32, ["N"])],
        [_tensor("logits", TensorProto.FLOAT, ["N", "T", vocab]), _tensor("token_num", TensorProto.INT32, ["N"])],
        [_weight("w", rng.normal(0, width**-0.5, (width, vocab))), _weight("b", bias)])
    return _save(model_dir, filename, graph, {
        "model_type": "paraformer", "vocab_size": str(vocab),
        "lfr_window_size": str(LFR_WINDOW), "lfr_window_shift": str(LFR_SHIFT),
        "neg_mean": ",".join(["0"] * width), "inv_stddev": ",".join(["0.1"] * width)})


def build_sense_voice(model_dir: Path, *, seed: int = 0, filename: str = "model.int8.onnx") -> Path:
    """SenseVoice: x (N, T, 560), x_length, language, text_norm → logits (N, 4 + T, vocab).

    The real model puts four query frames (language, emotion, event, normalization) in front of the
    speech frames; sherpa-onnx reads 4 + T frames, so the graph pads four (all-zero, hence blank) ones.
    """
    rng = np.random.default_rng(seed)
    width, vocab = FEATURE_DIM * LFR_WINDOW, len(SYMBOLS)
    bias = rng.normal(0, 0.1, vocab).astype(np.float32)
    bias[0] = -1e4  # blank (the four padded frames stay blank: they are zeros, added after the bias)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["scores"]),
         helper.make_node("Pad", ["scores", "pads"], ["padded"]),
         helper.make_node("LogSoftmax", ["padded"], ["logits"], axis=-1)],
        "sense_voice",
        [_tensor("x", TensorProto.FLOAT, ["N", "T", width]), _tensor("x_length", TensorProto.INT32, ["N"]),
         _tensor("language", TensorProto.INT32, ["N"]), _tensor("text_norm", TensorProto.INT32, ["N"])],
        [_tensor("logits", TensorProto.FLOAT, ["N", "T4", vocab])],
        [_weight("w", rng.normal(0, width**-0.5, (width, vocab))), _weight("b", bias),
         numpy_helper.from_array(np.array([0, 4, 0, 0, 0, 0], dtype=np.int64), "pads")])
    metadata = {"model_type": "sense_voice_ctc", "vocab_size": str(vocab), "blank_id": "0",
                "lfr_window_size": str(LFR_WINDOW), "lfr_window_shift": str(LFR_SHIFT), "normalize_samples": "0",
                "with_itn": "14", "without_itn": "15",
                "neg_mean": ",".join(["0"] * width), "inv_stddev": ",".join(["0.1"] * width)}
    metadata |= {f"lang_{lang}": str(i) for i, lang in enumerate(["auto", "zh", "en", "yue", "ja", "ko"])}
    return _save(model_dir, filename, graph, metadata)


def build_transducer(model_dir: Path, *, seed: int = 0, suffix: str = "-epoch-99-avg-1.int8.onnx") -> None:
    """encoder/decoder/joiner as an icefall zipformer export: the encoder subsamples time by 4, context size 2."""
    rng = np.random.default_rng(seed)
    vocab, context = len(SYMBOLS), 2
    encoder = helper.make_graph(
        [helper.make_node("Slice", ["x", "zero", "end", "one", "four"], ["kept"]),  # every 4th frame
         helper.make_node("MatMul", ["kept", "w"], ["encoder_out"]),
         helper.make_node("Add", ["x_lens", "three"], ["rounded_up"]),
         helper.make_node("Div", ["rounded_up", "four"], ["encoder_out_lens"])],
        "encoder",
        [_tensor("x", TensorProto.FLOAT, ["N", "T", FEATURE_DIM]), _tensor("x_lens", TensorProto.INT64, ["N"])],
        [_tensor("encoder_out", TensorProto.FLOAT, ["N", "T4", HIDDEN]),
         _tensor("encoder_out_lens", TensorProto.INT64, ["N"])],
        [_weight("w", rng.normal(0, 0.3, (FEATURE_DIM, HIDDEN))), _int64("zero", 0), _int64("end", 2**62),
         _int64("one", 1), _int64("three", 3), _int64("four", 4)])
    _save(model_dir, f"encoder{suffix}", encoder, {"model_type": "zipformer2"})
    decoder = helper.make_graph(  # the last `context` tokens (-1 pads the start) → one vector
        [helper.make_node("Gather", ["embedding", "y"], ["embedded"]),
         helper.make_node("Flatten", ["embedded"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["decoder_out"])],
        "decoder",
        [_tensor("y", TensorProto.INT64, ["N", context])],
        [_tensor("decoder_out", TensorProto.FLOAT, ["N", HIDDEN])],
        [_weight("embedding", rng.normal(0, 1, (vocab, HIDDEN))),
         _weight("w", rng.normal(0, (context * HIDDEN) ** -0.5, (context * HIDDEN, HIDDEN)))])
    _save(model_dir, f"decoder{suffix}", decoder, {"vocab_size": str(vocab), "context_size": str(context)})
    bias = rng.normal(0, 0.1, vocab).astype(np.float32)
    bias[0] = -1e4  # blank: without it a random joiner may emit nothing at all
    joiner = helper.make_graph(
        [helper.make_node("Add", ["encoder_out", "decoder_out"], ["summed"]),
         helper.make_node("Tanh", ["summed"], ["hidden"]),
         helper.make_node("MatMul", ["hidden", "w"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["logit"])],
        "joiner",
        [_tensor("encoder_out", TensorProto.FLOAT, ["N", HIDDEN]),
         _tensor("decoder_out", TensorProto.FLOAT, ["N", HIDDEN])],
        [_tensor("logit", TensorProto.FLOAT, ["N", vocab])],
        [_weight("w", rng.normal(0, 1, (HIDDEN, vocab))), _weight("b", bias)])
    _save(model_dir, f"joiner{suffix}", joiner, {})


def build_nemo_ctc(model_dir: Path, *, seed: int = 0, filename: str = "model.onnx") -> Path:
    """A NeMo CTC export: audio_signal (N, 80, T), length → logprobs (N, T, vocab); blank is ``<blank>``."""
    rng = np.random.default_rng(seed)
    vocab = len(SYMBOLS)
    bias = rng.normal(0, 0.1, vocab).astype(np.float32)
    bias[0] = -1e4  # blank
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["audio_signal"], ["frames"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["frames", "w"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["scores"]),
         helper.make_node("LogSoftmax", ["scores"], ["logprobs"], axis=-1)],
        "nemo_ctc",
        [_tensor("audio_signal", TensorProto.FLOAT, ["N", FEATURE_DIM, "T"]),
         _tensor("length", TensorProto.INT64, ["N"])],
        [_tensor("logprobs", TensorProto.FLOAT, ["N", "T", vocab])],
        [_weight("w", rng.normal(0, FEATURE_DIM**-0.5, (FEATURE_DIM, vocab))), _weight("b", bias)])
    return _save(model_dir, filename, graph, {
        "model_type": "EncDecCTCModelBPE", "vocab_size": str(vocab), "subsampling_factor": "1",
        "normalize_type": "per_feature"})


def _tensor(name: str, elem_type: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _weight(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)


def _int64(name: str, value: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array([value], dtype=np.int64), name)


def _save(model_dir: Path, filename: str, graph: onnx.GraphProto, metadata: dict[str, str]) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    path = model_dir / filename
    onnx.save(model, str(path))
    return path
