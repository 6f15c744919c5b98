"""`kefu speech pull` against a loopback HTTP server (a real socket) serving real archives: a tiny random-weight
sherpa-onnx paraformer (tests/sherpa_model.py) packed the way the sherpa-onnx releases pack theirs, and archives
that must be refused. Whatever is refused leaves nothing behind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from channels.speech.sherpa_asr import SherpaOnnxRecognizer
from channels.telephony import asr_language
from models.settings import Settings
from tests.conftest import REPO
from tests.sherpa_model import build_paraformer, write_tokens
from workers import speech_command

ROOT = "sherpa-onnx-test-zh-2026-01-01"  # the archive's one top-level directory, as in the releases


def tar_bz2(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:bz2") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    model = tmp_path_factory.mktemp("model")
    build_paraformer(model)
    write_tokens(model)
    files = {f"{ROOT}/{p.name}": p.read_bytes() for p in model.iterdir()}
    good = tar_bz2(files)
    return {
        "/good.tar.bz2": good,
        "/cut.tar.bz2": good,  # served with its full length, closed halfway
        "/traversal.tar.bz2": tar_bz2({**files, f"{ROOT}/../../escaped.txt": b"out of the archive"}),
        "/absolute.tar.bz2": tar_bz2({**files, "/tmp/kefu-absolute.txt": b"x"}),
        "/link.tar.bz2": tar_bz2(files, links={f"{ROOT}/passwd": "/etc/passwd"}),
        "/garbage.tar.bz2": os.urandom(50_000),
        "/not-a-model.tar.bz2": tar_bz2({f"{ROOT}/README.md": b"# just a readme\n"}),
    }


@pytest.fixture(scope="module")
def server(archives: dict[str, bytes]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = archives.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/cut.tar.bz2":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def kefu(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=clean | {"KEFU_DATA_DIR": str(data_dir), **env})


def leftovers(data_dir: Path) -> list[str]:
    speech = data_dir / "speech"
    return sorted(p.name for p in speech.iterdir()) if speech.exists() else []


def test_a_pulled_model_is_installed_loads_and_is_named_for_kefu_local_asr_model_dir(server: str,
                                                                                     tmp_path: Path) -> None:
    done = kefu(tmp_path, "speech", "pull", "test-zh", "--url", f"{server}/good.tar.bz2")
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "speech" / "test-zh"
    assert done.stdout == f"KEFU_LOCAL_ASR_MODEL_DIR={installed}\n"
    assert "100.0%" in done.stderr and "installed the paraformer model" in done.stderr
    assert sorted(p.name for p in installed.iterdir()) == ["model.int8.onnx", "tokens.txt"]
    assert leftovers(tmp_path) == ["test-zh"]  # no work directory left
    speech = bytes(16000)  # (silence is enough to run the network end to end)
    assert isinstance(SherpaOnnxRecognizer(installed).transcribe(speech, 16000), str)
    # the line it printed makes a Chinese hotline acceptable at start-up
    settings = Settings(data_dir=tmp_path, local_asr_model_dir=installed, voice_gateways=[{"name": "p", "secret": "s"}],
                        hotlines=[{"number": "4008001234", "greeting": "您好。"}])
    asr_language.check(settings)

    listed = kefu(tmp_path, "speech", "list", KEFU_LOCAL_ASR_MODEL_DIR=str(installed))
    assert listed.returncode == 0, listed.stderr
    assert "paraformer-zh-small" in listed.stdout and "sense-voice-int8" in listed.stdout
    assert [line for line in listed.stdout.splitlines() if line.startswith("test-zh")] == [
        f"{'test-zh':<22}{'':>8}  {'in use':<10} (pulled with --url)"]

    again = kefu(tmp_path, "speech", "pull", "test-zh", "--url", f"{server}/good.tar.bz2")
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    forced = kefu(tmp_path, "speech", "pull", "test-zh", "--url", f"{server}/good.tar.bz2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert leftovers(tmp_path) == ["test-zh"]


@pytest.mark.parametrize(("path", "says"), [
    ("/traversal.tar.bz2", "outside itself"),
    ("/absolute.tar.bz2", "outside itself"),
    ("/link.tar.bz2", "not a plain file or directory"),
    ("/garbage.tar.bz2", "not a readable model archive"),
    ("/not-a-model.tar.bz2", "no model Kefu can load"),
    ("/cut.tar.bz2", "downloading"),  # the server closed the connection halfway (not "the download is ...")
    ("/missing.tar.bz2", "HTTP 404"),
])
def test_a_bad_download_is_refused_and_leaves_nothing(server: str, tmp_path: Path, path: str, says: str) -> None:
    err = io.StringIO()
    settings = Settings(data_dir=tmp_path)
    code = speech_command.run_pull(settings, "test-zh", f"{server}{path}", None, False, err=err, out=io.StringIO())
    assert code == 1
    assert says in err.getvalue()
    assert leftovers(tmp_path) == []  # neither the model nor a work directory
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/kefu-absolute.txt").exists()


def test_the_network_down_is_a_clear_error_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = kefu(tmp_path, "speech", "pull", "test-zh", "--url", f"http://127.0.0.1:{port}/x.tar.bz2")
    assert done.returncode == 1
    assert "downloading" in done.stderr and "ConnectError" in done.stderr and "--url" in done.stderr
    assert leftovers(tmp_path) == []


def test_a_local_archive_can_be_pulled_and_an_unknown_name_needs_a_url(archives: dict[str, bytes],
                                                                         tmp_path: Path) -> None:
    archive = tmp_path / "copied-from-elsewhere.tar.bz2"
    archive.write_bytes(archives["/good.tar.bz2"])
    target = tmp_path / "models" / "zh"
    out = io.StringIO()
    assert speech_command.run_pull(Settings(data_dir=tmp_path), "zh", str(archive), str(target), False,
                                   err=io.StringIO(), out=out) == 0
    assert out.getvalue() == f"KEFU_LOCAL_ASR_MODEL_DIR={target}\n" and (target / "tokens.txt").is_file()
    err = io.StringIO()
    assert speech_command.run_pull(Settings(data_dir=tmp_path), "no-such-model", None, None, False,
                                   err=err, out=io.StringIO()) == 2
    assert "paraformer-zh-small" in err.getvalue()
