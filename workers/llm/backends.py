"""Where a worker's answers come from: one description of a model backend, and the one place that builds its engine.

A :class:`Backend` is ``local`` (a GGUF through llama-cpp-python: the batched or the simple engine, as
``KEFU_ENGINE`` says) or ``openai`` (an OpenAI-compatible upstream, :mod:`workers.llm.upstream`).
:func:`primary_backend` reads the one the settings choose (``KEFU_LLM_BACKEND`` and friends); a second one (the gray
release's canary) is described the same way and built by the same :func:`build_engine`.

Raises :class:`~workers.llm.model_files.ModelUnavailable` for a local backend without a usable GGUF and
:class:`~models.settings.ConfigError` for an ``openai`` backend without URLs or a model, naming what to set.
Building never loads a model or calls the upstream: that happens in ``load()``, in the process that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from models.infra.kv import KV
from models.infra.load import publish_wait
from models.settings import ConfigError, Settings, mask_url
from workers.llm.batched import BatchedEngine
from workers.llm.engine import LlamaEngine, TextEngine
from workers.llm.model_files import ModelUnavailable, resolve_model
from workers.llm.upstream import UpstreamEngine


class Backend(BaseModel):
    """One model backend. ``local``: ``model_path`` (else the settings' model_path / model_repo+model_file / the
    demo); ``openai``: ``urls`` (base URLs ending in /v1), ``model`` (the id to request), ``api_key`` (Bearer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local", "openai"] = "local"
    model_path: Path | None = None
    urls: list[str] = []
    model: str | None = None
    api_key: SecretStr | None = None  # masked wherever a Backend is printed

    @field_validator("urls")
    @classmethod
    def _base_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} must be an http:// or https:// base URL ending in /v1")
        return [url.rstrip("/") for url in value]

    def describe(self) -> str:
        """What the backend is, for logs and the audit (no key)."""
        if self.kind == "openai":
            return f"openai upstream {self.model} at {', '.join(mask_url(url) for url in self.urls)}"
        return f"local GGUF {self.model_path}" if self.model_path is not None else "local GGUF (the settings' model)"


def primary_backend(settings: Settings) -> Backend:
    """The backend the settings choose: KEFU_LLM_BACKEND, KEFU_UPSTREAM_* (openai) or the local GGUF."""
    if settings.llm_backend == "openai":
        return Backend(kind="openai", urls=settings.upstream_urls, model=settings.upstream_model,
                       api_key=settings.upstream_api_key)
    return Backend(kind="local")


def build_engine(settings: Settings, backend: Backend, kv: KV | None = None) -> TextEngine:
    """The engine for ``backend``, not loaded yet. ``kv``: where a batched engine publishes its wait estimate (the
    WeChat busy notice and admission read it); None: it publishes none."""
    if backend.kind == "openai":
        if not backend.urls or not backend.model:
            raise ConfigError("an openai backend needs its base URLs (KEFU_UPSTREAM_URLS, or the backend's \"urls\") "
                              "and a model id (KEFU_UPSTREAM_MODEL, or \"model\")")
        key = backend.api_key.get_secret_value() if backend.api_key is not None else None
        return UpstreamEngine(backend.urls, backend.model, settings, api_key=key)
    if backend.model_path is not None:
        path = backend.model_path.expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"the backend's model_path {path} does not exist or is not a file")
        settings = settings.model_copy(update={"model_path": path})
    spec = resolve_model(settings)
    if settings.engine == "batched":
        engine = BatchedEngine(spec, settings)
        if kv is not None:
            engine.on_wait_estimate = lambda seconds: publish_wait(kv, seconds)
        return engine
    return LlamaEngine(spec, settings)
