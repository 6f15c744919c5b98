"""WeChat voice files decoded to 16-bit mono PCM for a recognizer.

The format is told by the file's magic bytes, never by the platform's ``Format`` field or the
download's Content-Type (they say what was asked for, not what arrived):

- AMR-NB (``#!AMR\\n``) → 8 kHz and AMR-WB (``#!AMR-WB\\n``) → 16 kHz, decoded by ffmpeg's own
  amrnb/amrwb decoders (Debian package ``ffmpeg``);
- SILK v3 (``#!SILK_V3``, or ``\\x02#!SILK_V3`` as WeChat writes it) → 16 kHz, decoded by
  pysilk-mod (the Skype SILK SDK) in a child Python process, after its frame structure (16-bit
  little-endian lengths, each followed by that many payload bytes) has been checked here;
- Ogg (``OggS``: Speex or Opus, the official account's ``speex`` voice) → 16 kHz, by ffmpeg.

The rates are what the recognizers want (pocketsphinx and NLS work at 16 kHz; AMR-NB holds no more
than 8 kHz).

Guarantees: bytes from outside are only ever decoded in a child process under a timeout — a native
decoder may crash on a malformed file (the SILK decoder does, on a file whose frames are
consistent but whose bits are not), and that must not take the worker with it. ffmpeg reads only
from its pipe, with the demuxer fixed by the magic, and stops after ``max_seconds`` of audio.

Raises :class:`VoiceFileError` (a :class:`~channels.speech.base.SpeechError`) for a file that is
not a known voice format or does not decode to any audio, and its subclass
:class:`DecoderUnavailable` when the decoder itself is missing (ffmpeg or pysilk-mod not
installed) or times out — an operator's problem rather than the customer's.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass

from channels.speech.base import SpeechError

AMR_NB_MAGIC = b"#!AMR\n"
AMR_WB_MAGIC = b"#!AMR-WB\n"
SILK_MAGIC = b"#!SILK_V3"
OGG_MAGIC = b"OggS"
SILK_RATE = 16000  # asked of the SILK decoder (it resamples internally)
SILK_MAX_FRAME = 1250  # bytes: the most a SILK encoder emits in one packet (100 kbit/s, 100 ms)
SILK_FRAME_S = 0.02  # WeChat's SILK packets hold 20 ms each

# ffmpeg demuxer and the rate its decoder produces natively (no resampling of speech is wanted)
_FFMPEG_FORMATS = {"amr-nb": ("amr", 8000), "amr-wb": ("amr", 16000), "ogg": ("ogg", 16000)}

# The child that decodes SILK: stdin the file (Tencent's flavour, with the leading 0x02: the decoder skips
# one byte before the header), stdout the PCM. Isolated mode (-I): no cwd or user site on its path.
_SILK_CHILD = (
    "import sys\n"
    "from pysilk.coder import silkDecode\n"
    f"sys.stdout.buffer.write(silkDecode(sys.stdin.buffer.read(), {SILK_RATE}))\n"
)


class VoiceFileError(SpeechError):
    """The bytes are not a voice file that decodes to audio."""


class DecoderUnavailable(VoiceFileError):
    """The decoder could not run (not installed, or it did not finish in time)."""


@dataclass(frozen=True, slots=True)
class DecodedVoice:
    pcm: bytes  # 16-bit little-endian mono
    sample_rate: int
    format: str  # amr-nb | amr-wb | silk | ogg

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (2 * self.sample_rate)


def sniff(data: bytes) -> str | None:
    """The voice format of a file's bytes (``amr-nb``, ``amr-wb``, ``silk``, ``ogg``), or None."""
    if data.startswith(AMR_NB_MAGIC):
        return "amr-nb"
    if data.startswith(AMR_WB_MAGIC):
        return "amr-wb"
    if data.startswith(SILK_MAGIC) or data[1:].startswith(SILK_MAGIC):
        return "silk"
    if data.startswith(OGG_MAGIC):
        return "ogg"
    return None


def decode(data: bytes, *, max_seconds: float = 120.0, timeout_s: float = 15.0, ffmpeg: str = "ffmpeg") -> DecodedVoice:
    """The audio of one voice file as 16-bit mono PCM at the format's own rate (at most ``max_seconds``)."""
    kind = sniff(data)
    if kind is None:
        raise VoiceFileError(f"not a voice file (starts with {data[:9]!r}; expected AMR, SILK v3 or Ogg)")
    if kind == "silk":
        if not _silk_installed():
            raise DecoderUnavailable("pysilk-mod is not installed; it decodes SILK voice files")
        silk = check_silk(data, max_frames=int(max_seconds / SILK_FRAME_S) + 1)
        pcm = _run([sys.executable, "-I", "-c", _SILK_CHILD], b"\x02" + silk, timeout_s, "the SILK decoder")
        rate = SILK_RATE
        pcm = pcm[: int(max_seconds * rate) * 2]
    else:
        demuxer, rate = _FFMPEG_FORMATS[kind]
        path = shutil.which(ffmpeg)
        if path is None:
            raise DecoderUnavailable(f"{ffmpeg} is not installed (Debian/Ubuntu: apt-get install ffmpeg); "
                                     "it decodes AMR and Ogg voice messages")
        argv = [path, "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "pipe", "-f", demuxer,
                "-i", "pipe:0", "-t", f"{max_seconds:g}", "-vn", "-ac", "1", "-ar", str(rate),
                "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
        pcm = _run(argv, data, timeout_s, "ffmpeg")
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    if not pcm:
        raise VoiceFileError(f"the {kind} file holds no audio")
    return DecodedVoice(pcm, rate, kind)


def check_silk(data: bytes, max_frames: int | None = None) -> bytes:
    """The SILK stream from its ``#!SILK_V3`` on (at most ``max_frames`` frames of it), once every frame's
    length is plausible and within the file."""
    start = data.index(SILK_MAGIC)
    position, frames = start + len(SILK_MAGIC), 0
    while position + 2 <= len(data) and (max_frames is None or frames < max_frames):
        size = int.from_bytes(data[position : position + 2], "little", signed=True)
        if size == -1 and frames:  # the end marker of the SDK's own encoder
            break
        if not 0 < size <= SILK_MAX_FRAME or position + 2 + size > len(data):
            raise VoiceFileError(f"not a SILK stream: frame {frames + 1} claims {size} bytes")
        position += 2 + size
        frames += 1
    if not frames:
        raise VoiceFileError("the SILK file holds no frames")
    return data[start:position]


def _silk_installed() -> bool:
    return importlib.util.find_spec("pysilk") is not None


def _run(argv: list[str], data: bytes, timeout_s: float, what: str) -> bytes:
    try:
        done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout_s, check=False)  # noqa: S603 - fixed argv, no shell
    except subprocess.TimeoutExpired:
        raise DecoderUnavailable(f"{what} did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise DecoderUnavailable(f"{what} could not be started: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1][:200] if detail else f"exit status {done.returncode}"
        if done.returncode < 0:
            reason = f"crashed (signal {-done.returncode})"
        raise VoiceFileError(f"{what} could not decode the file: {reason}")
    return done.stdout
