"""``kefu speech pull|list``: Mandarin speech-recognition models for the phone, without a cloud.

    kefu speech list                                  the catalogue (channels/speech/catalog.py), what is installed
    kefu speech pull NAME [--url URL] [--dir DIR] [--force]

``pull`` downloads the catalogue's archive for NAME (or the archive at ``--url``: a mirror, or a local file for a
host that cannot reach GitHub) into ``<KEFU_DATA_DIR>/speech/NAME`` (or ``--dir``), with a progress bar on
stderr, and prints the line to set: ``KEFU_LOCAL_ASR_MODEL_DIR=<the directory>``. What it checks and guarantees
is in :mod:`channels.speech.model_pull`.

Exit status: 0 when installed (or listed); 1 when the pull failed (the reason on stderr; nothing is left
behind); 2 for a NAME the catalogue lacks without ``--url``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from channels.speech.catalog import CATALOG, MODELS
from channels.speech.model_pull import PullError, pull
from models.settings import Settings

SPEECH_DIR = "speech"  # under KEFU_DATA_DIR


def models_dir(settings: Settings) -> Path:
    return (settings.data_dir / SPEECH_DIR).absolute()


def run_pull(settings: Settings, name: str, url: str | None, directory: str | None, force: bool,
             err: TextIO = sys.stderr, out: TextIO = sys.stdout) -> int:
    known = CATALOG.get(name)
    if known is None and url is None:
        print(f"kefu speech pull: no model {name!r} in the catalogue ({', '.join(CATALOG)}); give its archive "
              "with --url URL to pull another", file=err)
        return 2
    if directory is None and not _safe_name(name):
        print(f"kefu speech pull: {name!r} cannot be a directory name; use letters, digits, '-', '_' and '.', "
              "or give --dir", file=err)
        return 2
    target = Path(directory) if directory else models_dir(settings) / name
    source = url or (known.url if known else "")
    size = f" ({known.size / 1e6:.0f} MB)" if known and not url else ""
    print(f"pulling {name} from {source}{size} into {target.absolute()}", file=err)
    bar = ProgressBar(err)
    try:
        installed = pull(source, target, progress=bar.update, expected_size=known.size if known else None,
                         replace=force)
    except PullError as exc:
        bar.done()
        print(f"kefu speech pull: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        bar.done()
        print("kefu speech pull: interrupted; nothing was installed", file=err)
        return 1
    bar.done()
    checked = "loaded by sherpa-onnx" if installed.loaded else "files checked (sherpa-onnx is not installed here)"
    print(f"installed the {installed.kind} model in {installed.path} ({checked}). Set:", file=err)
    print(f"KEFU_LOCAL_ASR_MODEL_DIR={installed.path}", file=out)
    return 0


def run_list(settings: Settings, out: TextIO = sys.stdout) -> int:
    root = models_dir(settings)
    configured = settings.local_asr_model_dir.absolute() if settings.local_asr_model_dir else None
    print(f"{'NAME':<22}{'SIZE':>8}  {'INSTALLED':<10} LANGUAGES — NOTE", file=out)
    for model in MODELS:
        installed = _state(root / model.name, configured)
        print(f"{model.name:<22}{model.size / 1e6:>5.0f} MB  {installed:<10} {model.languages} — {model.note}", file=out)
    others = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in CATALOG
                    and not p.name.startswith(".")) if root.is_dir() else []
    for path in others:
        print(f"{path.name:<22}{'':>8}  {_state(path, configured):<10} (pulled with --url)", file=out)
    print(f"\nmodels live in {root}; `kefu speech pull NAME` installs one, and prints the "
          "KEFU_LOCAL_ASR_MODEL_DIR line to set", file=out)
    if configured is None:
        print("KEFU_LOCAL_ASR_MODEL_DIR is not set: the phone recognizes English only (pocketsphinx)"
              if settings.speech_provider == "local" else "KEFU_SPEECH_PROVIDER=nls: Aliyun NLS recognizes speech",
              file=out)
    else:
        print(f"KEFU_LOCAL_ASR_MODEL_DIR={configured}", file=out)
    return 0


def _state(path: Path, configured: Path | None) -> str:
    if not (path / "tokens.txt").is_file():
        return "-"
    return "in use" if configured == path.absolute() else "yes"


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "-_." for c in name)


class ProgressBar:
    """``12.3 / 77.9 MB  15.8%  2.1 MB/s`` on one line of a terminal, redrawn at most 5 times a second; where
    stderr is not a terminal, a line every 10%."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self._decile = -1
        self._shown = False

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self._tty and now - self._last < 0.2 and (total is None or done < total):
            return
        rate = done / max(now - self._started, 1e-3)
        line = f"{done / 1e6:8.1f}"
        if total:
            percent = min(100.0, 100 * done / total)
            if not self._tty:
                decile = int(percent // 10)
                if decile == self._decile:
                    return
                self._decile = decile
            line += f" / {total / 1e6:.1f} MB {percent:5.1f}%"
        else:
            if not self._tty:
                return
            line += " MB"
        line += f"  {rate / 1e6:5.1f} MB/s"
        self._last = now
        self._shown = True
        self._stream.write(f"\r{line}" if self._tty else f"{line}\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\n")
            self._stream.flush()
        self._shown = False
