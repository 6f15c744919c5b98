"""Voice files as WeChat clients record them, for tests: AMR-NB, AMR-WB and SILK v3 from 16-bit PCM.

AMR is encoded with the reference codec libraries through ctypes — opencore-amrnb
(``Encoder_Interface_Encode``, Debian ``libopencore-amrnb0``) and VisualOn's AMR-WB encoder
(``E_IF_encode``, ``libvo-amrwbenc0``) — because Debian's ffmpeg decodes AMR but cannot encode it.
The frames they return are the storage format of RFC 4867 §5 (a table-of-contents byte, then the
speech bits), so the file is the magic followed by the frames. SILK comes from pysilk-mod (the Skype
SDK), in Tencent's flavour (a leading 0x02 byte) or plain.

Raises OSError when a codec library is missing (``make system`` installs them).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

import numpy as np

AMR_NB_MR122 = 7  # 12.2 kbit/s, the mode WeChat's clients record in
AMR_WB_MD2385 = 8  # 23.85 kbit/s


@cache
def _library(name: str) -> ctypes.CDLL:
    return ctypes.CDLL(name)


def amr_nb(pcm: bytes, mode: int = AMR_NB_MR122) -> bytes:
    """An ``#!AMR`` file of 8 kHz 16-bit mono PCM (160 samples a frame)."""
    lib = _library("libopencore-amrnb.so.0")
    lib.Encoder_Interface_init.restype = ctypes.c_void_p
    lib.Encoder_Interface_init.argtypes = [ctypes.c_int]
    lib.Encoder_Interface_Encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                             ctypes.c_int]
    lib.Encoder_Interface_exit.argtypes = [ctypes.c_void_p]
    state = lib.Encoder_Interface_init(0)
    try:
        return b"#!AMR\n" + _frames(pcm, 320, lambda frame, out: lib.Encoder_Interface_Encode(state, mode, frame, out, 0))
    finally:
        lib.Encoder_Interface_exit(state)


def amr_wb(pcm: bytes, mode: int = AMR_WB_MD2385) -> bytes:
    """An ``#!AMR-WB`` file of 16 kHz 16-bit mono PCM (320 samples a frame)."""
    lib = _library("libvo-amrwbenc.so.0")
    lib.E_IF_init.restype = ctypes.c_void_p
    lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.E_IF_exit.argtypes = [ctypes.c_void_p]
    state = lib.E_IF_init()
    try:
        return b"#!AMR-WB\n" + _frames(pcm, 640, lambda frame, out: lib.E_IF_encode(state, mode, frame, out, 0))
    finally:
        lib.E_IF_exit(state)


def silk(pcm: bytes, sample_rate: int, *, tencent: bool = True, bitrate: int = 24000) -> bytes:
    """A SILK v3 file (``\\x02#!SILK_V3`` when ``tencent``) of 16-bit mono PCM."""
    import pysilk

    data: bytes = pysilk.encode(pcm, bitrate, sample_rate=sample_rate)
    assert data.startswith(b"\x02#!SILK_V3")
    return data if tencent else data[1:]


def _frames(pcm: bytes, frame_bytes: int, encode: Callable[[bytes, ctypes.Array[ctypes.c_char]], int]) -> bytes:
    pcm += bytes(-len(pcm) % frame_bytes)  # the last frame padded with silence
    out = ctypes.create_string_buffer(128)
    frames = []
    for start in range(0, len(pcm), frame_bytes):
        size = encode(pcm[start : start + frame_bytes], out)
        if size <= 0:
            raise ValueError(f"the AMR encoder refused a frame ({size})")
        frames.append(out.raw[:size])
    return b"".join(frames)


def rms_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768)
