"""Model backends (workers/llm/backends.py): the settings that choose one, the start-up check, and the engine each
builds (nothing is loaded or called by building)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.settings import ConfigError, Settings, load_settings
from workers import intent_model
from workers.llm.backends import Backend, build_engine, primary_backend
from workers.llm.batched import BatchedEngine
from workers.llm.engine import LlamaEngine
from workers.llm.model_files import ModelUnavailable
from workers.llm.upstream import UpstreamEngine


def test_the_openai_backend_needs_urls_and_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEFU_LLM_BACKEND=openai needs KEFU_UPSTREAM_URLS .* KEFU_UPSTREAM_MODEL"):
        load_settings(data_dir=tmp_path, llm_backend="openai", upstream_model="qwen3-4b")
    with pytest.raises(ConfigError, match="KEFU_UPSTREAM_MODEL"):
        load_settings(data_dir=tmp_path, llm_backend="openai", upstream_urls=["http://vllm:8000/v1"])
    with pytest.raises(ConfigError, match=r"KEFU_UPSTREAM_URLS: .*'vllm:8000/v1' must be an http:// or https://"):
        load_settings(data_dir=tmp_path, upstream_urls=["vllm:8000/v1"])
    assert load_settings(data_dir=tmp_path).llm_backend == "local"


def test_upstream_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_LLM_BACKEND", "openai")
    monkeypatch.setenv("KEFU_UPSTREAM_URLS", "http://gpu-1:8000/v1/, https://gpu-2:8000/v1")
    monkeypatch.setenv("KEFU_UPSTREAM_MODEL", "Qwen/Qwen3-14B")
    monkeypatch.setenv("KEFU_UPSTREAM_API_KEY", "sk-secret-value-1234")
    settings = load_settings(data_dir=tmp_path)
    backend = primary_backend(settings)
    assert backend == Backend(kind="openai", urls=["http://gpu-1:8000/v1", "https://gpu-2:8000/v1"],
                              model="Qwen/Qwen3-14B", api_key="sk-secret-value-1234")
    assert "sk-secret-value-1234" not in repr(backend) and "sk-secret-value-1234" not in backend.describe()
    assert settings.masked()["upstream_api_key"] == "********"
    engine = build_engine(settings, backend)
    try:
        assert isinstance(engine, UpstreamEngine)
        assert engine.model_name == "Qwen/Qwen3-14B" and not engine.loaded
        assert engine.label == "Qwen/Qwen3-14B (openai upstream http://gpu-1:8000, https://gpu-2:8000)"
        # no grammar sampler: the model's intent step leaves the rules' intent alone, even when asked to run
        assert not intent_model.model_on(settings.model_copy(update={"intent_model": "on"}), engine)
    finally:
        engine.close()


def test_local_backends_build_the_configured_engine(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never read: building does not load
    settings = Settings(data_dir=tmp_path, model_path=gguf)
    assert isinstance(build_engine(settings, primary_backend(settings)), BatchedEngine)
    simple = build_engine(settings.model_copy(update={"engine": "simple"}), Backend())
    assert isinstance(simple, LlamaEngine) and simple.spec.path == gguf
    other = tmp_path / "canary.gguf"
    other.write_bytes(b"GGUF")
    canary = build_engine(settings, Backend(model_path=other))
    assert isinstance(canary, BatchedEngine) and canary.model_name == "canary"
    with pytest.raises(ModelUnavailable, match=r"missing\.gguf does not exist"):
        build_engine(settings, Backend(model_path=tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="base URLs"):
        build_engine(settings, Backend(kind="openai", model="m"))
    with pytest.raises(ValueError, match="must be an http"):
        Backend(kind="openai", urls=["gpu-1:8000"], model="m")
