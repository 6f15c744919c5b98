"""Install a sherpa-onnx model from its archive: download, unpack safely, check the layout, move in atomically.

All work happens in a hidden directory beside the target (the same file system, so installing is one rename):

1. the archive is downloaded (``http(s)://``, following redirects, ``HTTPS_PROXY`` honoured) or copied (a local
   path or ``file://``) to a ``.part`` file; a download shorter than its ``Content-Length`` is an error;
2. it is unpacked (tar, bzip2/gzip/xz): only regular files and directories, every name relative and inside the
   archive (no ``..``, no absolute name, no link or device), at most :data:`MAX_UNPACKED` bytes in all;
3. the model directory (the archive's one top-level directory, else its root) must hold a layout
   :mod:`channels.speech.sherpa_asr` reads, and load when sherpa-onnx is installed;
4. it is renamed to the target (an existing one only with ``replace``, swapped out and removed after).

Whatever fails, and on Ctrl-C, the hidden directory is removed: nothing half-written is left behind.
Raises :class:`PullError`, whose message says what went wrong for an operator.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import httpx

from channels.speech.base import SpeechError

MAX_UNPACKED = 8 * 1024**3  # the largest sherpa-onnx Mandarin model unpacks to about 1 GB
CHUNK = 1 << 16
TIMEOUT = httpx.Timeout(30.0, connect=15.0)  # 30 s without a byte from the server ends the download

Progress = Callable[[int, int | None], None]  # bytes so far, total (None when unknown)


class PullError(Exception):
    """The model could not be installed (download, archive or layout); nothing was left behind."""


@dataclass(frozen=True, slots=True)
class Installed:
    path: Path
    kind: str  # the sherpa-onnx layout found (paraformer, sense_voice, transducer ...)
    loaded: bool  # sherpa-onnx itself loaded it (False: sherpa-onnx is not installed; only the files were read)


def pull(source: str, target: Path, *, progress: Progress | None = None, expected_size: int | None = None,
         replace: bool = False) -> Installed:
    """Install the model archive at ``source`` (URL or path) as the directory ``target``."""
    target = target.absolute()
    if target.exists() and not replace:
        raise PullError(f"{target} already exists (remove it, or pull again with --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".pull-{target.name}-", dir=target.parent))
    try:
        archive = work / "archive.part"
        fetch(source, archive, progress or (lambda _done, _total: None), expected_size)
        unpacked = work / "unpacked"
        unpack(archive, unpacked)
        archive.unlink()
        model_dir = model_root(unpacked)
        kind, loaded = verify(model_dir)
        _move_in(model_dir, target, work)
        return Installed(target, kind, loaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch(source: str, dest: Path, progress: Progress, expected_size: int | None = None) -> None:
    local = _local_path(source)
    if local is not None:
        _copy(local, dest, progress)
        return
    try:
        with httpx.stream("GET", source, follow_redirects=True, timeout=TIMEOUT,
                          headers={"User-Agent": "kefu-speech-pull"}) as response:
            if response.status_code != 200:
                raise PullError(f"{source} answered HTTP {response.status_code} (is the URL right? a mirror "
                                "with --url URL may reach it)")
            length = int(response.headers.get("content-length") or 0) or None  # on the wire (before any decoding)
            with dest.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    progress(response.num_bytes_downloaded, length or expected_size)
            received = response.num_bytes_downloaded
    except httpx.HTTPError as exc:
        raise PullError(f"downloading {source} failed: {type(exc).__name__}: {exc or 'no detail'} (network down, "
                        "or the server is out of reach from here? --url URL takes a mirror or a local file)") from None
    except OSError as exc:
        raise PullError(f"cannot write the download to {dest.parent}: {exc}") from None
    if length is not None and received != length:
        raise PullError(f"the download of {source} ended after {received} of {length} bytes")
    if received == 0:
        raise PullError(f"{source} sent nothing")


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a tar archive (any compression tarfile reads), refusing any member that is not a plain file or
    directory inside ``dest``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _refuse_unsafe(member)
                total += member.size
                if total > MAX_UNPACKED:
                    raise PullError(f"the archive unpacks to more than {MAX_UNPACKED // 1024**3} GiB: refused")
            if not members:
                raise PullError("the archive is empty")
            dest.mkdir()
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # a damaged bz2 stream is an OSError
        raise PullError(f"the download is not a readable model archive (.tar.bz2): {exc}") from None


def _refuse_unsafe(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not name.parts or "\\" in member.name:
        raise PullError(f"the archive names a file outside itself ({member.name!r}): refused")
    if not (member.isfile() or member.isdir()):
        raise PullError(f"the archive holds {member.name!r}, which is not a plain file or directory (a link or "
                        "device): refused")


def model_root(unpacked: Path) -> Path:
    """The archive's one top-level directory (how the sherpa-onnx releases pack a model), else its root."""
    entries = list(unpacked.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked


def verify(model_dir: Path) -> tuple[str, bool]:
    """(the layout's kind, whether sherpa-onnx loaded it); PullError when Kefu could not load it."""
    from channels.speech.sherpa_asr import SherpaOnnxRecognizer, _layout

    try:
        _, kind, _ = _layout(model_dir)
    except SpeechError as exc:
        raise PullError(f"the archive holds no model Kefu can load: {exc}") from None
    try:
        import sherpa_onnx  # noqa: F401
    except ImportError:
        return kind, False
    try:
        SherpaOnnxRecognizer(model_dir)
    except SpeechError as exc:
        raise PullError(f"sherpa-onnx cannot load the downloaded model: {exc}") from None
    return kind, True


def _move_in(model_dir: Path, target: Path, work: Path) -> None:
    if target.exists():  # replace: the old one is swapped out into the work directory (removed with it)
        os.replace(target, work / "replaced")
    os.replace(model_dir, target)


def _local_path(source: str) -> Path | None:
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a Windows drive, not a scheme
        raise PullError(f"{source}: only http://, https://, file:// or a local path can be pulled")
    return Path(source)


def _copy(source: Path, dest: Path, progress: Progress) -> None:
    try:
        total = source.stat().st_size
        done = 0
        with source.open("rb") as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress(done, total)
    except OSError as exc:
        raise PullError(f"cannot copy {source}: {exc}") from None
