"""Per-process worker resources, built lazily on first use inside the process that uses them.

Nothing here is created in a prefork parent: the Celery parent forks its children before any task
runs, and ``worker_process_init`` drops anything inherited. The model loads on the first
generation (or at child start when ``warm`` is asked for), in the child.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property, partial
from typing import TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from channels import desk_handoff, registry
from channels.admission import Admission
from channels.base import Channel, HandOffPort, Outbound, OutboundDeps, PullDeps, Puller
from channels.ingress import Ingress
from channels.speech.providers import SpeechProviders
from channels.wechat_api import AccessTokens, PlatformAPI, make_http
from models import intents, privacy
from models.infra.bus import Bus, make_bus
from models.infra.db import make_engine, make_session_factory
from models.infra.kv import KV, make_kv
from models.infra.locks import Locks, make_locks
from models.infra.queues import Publisher, make_celery
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings
from workers import gray_release
from workers.context import ContextStore, make_context_store
from workers.dense_faq import DenseFaqMatcher
from workers.grounding import Knowledge
from workers.llm.backends import build_engine, primary_backend
from workers.llm.embedding import LlamaEncoder, load_encoder
from workers.llm.engine import TextEngine

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._built: dict[tuple[str, str], object] = {}  # per channel: hand-off port, outbound, puller
        self._lock = threading.RLock()

    @cached_property
    def db(self) -> Engine:
        return make_engine(self.settings)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.db)

    @cached_property
    def bus(self) -> Bus:
        return make_bus(self.settings)

    @cached_property
    def locks(self) -> Locks:
        return make_locks(self.settings)

    @cached_property
    def context(self) -> ContextStore:
        return make_context_store(self.settings)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(make_celery(self.settings, "kefu-worker-publisher"))

    @cached_property
    def llm(self) -> TextEngine:
        """The engine of KEFU_LLM_BACKEND (workers.llm.backends): the local GGUF, or an OpenAI-compatible upstream."""
        # no kv: the engine's own wait estimate misses the broker's backlog; workers.backlog publishes the whole wait
        return build_engine(self.settings, primary_backend(self.settings))

    @property
    def gray(self) -> gray_release.GrayRelease | None:
        """The gray release of KEFU_CANARY_BACKEND (workers.gray_release); None without a canary. Built once per
        process under the lock: two threads must not each load a canary model."""
        return self._once("gray", "", lambda: gray_release.make(
            self.settings, self.kv, self.sessions, self.llm.model_name,
            lambda: bool(getattr(self.llm, "loaded", True))))

    @cached_property
    def faq_sync(self) -> FaqSync:
        """The knowledge base's FAQ sheets kept in this process's FAQ index (a daemon thread, started here)."""
        sync = FaqSync(self.sessions, self.settings)
        sync.start()
        return sync

    @cached_property
    def encoder(self) -> LlamaEncoder | None:
        """The embedding model (KEFU_EMBEDDING_MODEL_PATH), or None: lexical retrieval only."""
        return load_encoder(self.settings)

    @cached_property
    def knowledge(self) -> Knowledge:
        """The knowledge base in memory, for grounded answers (reloaded when it changes)."""
        return Knowledge(self.sessions, encoder=self.encoder, min_similarity=self.settings.embedding_min_similarity)

    @cached_property
    def dense_faq(self) -> DenseFaqMatcher | None:
        """The FAQ matched again with the embedding model in the worker; None without one."""
        return None if self.encoder is None else DenseFaqMatcher(self.encoder, self.settings)

    @cached_property
    def kv(self) -> KV:
        return make_kv(self.settings)

    @cached_property
    def ingress(self) -> Ingress:
        return Ingress(self.sessions, self.publisher, partial(privacy.stored_text, self.settings),
                      partial(intents.label, self.settings), notify=self.bus)

    @cached_property
    def platform(self) -> PlatformAPI:
        s = self.settings
        http = make_http(s.wechat_http_timeout_s)
        tokens = AccessTokens(http, self.kv, self.locks, mp_base=s.wechat_api_base, corp_base=s.wecom_api_base)
        return PlatformAPI(http, tokens, mp_base=s.wechat_api_base, corp_base=s.wecom_api_base)

    @cached_property
    def speech(self) -> SpeechProviders:
        """The configured speech providers (a worker uses the recognizer, for WeChat voice messages)."""
        return SpeechProviders(self.settings, self.kv, self.locks)


    def channel(self, name: str) -> Channel:
        """The registered channel (raises registry.UnknownChannel, a permanent delivery error)."""
        return registry.channel(name)

    def handoff(self, channel: str) -> HandOffPort:
        """The channel's hand-off port, built once per process."""
        return self._once("handoff", channel, lambda: desk_handoff.port(
            self.channel(channel).handoff(self.settings, self.kv), channel, self.settings, self.kv, self.sessions))

    def puller(self, channel: str) -> Puller:
        """The channel's puller, built once per process (UnknownChannel for a channel that does not pull)."""
        found = self.channel(channel)
        make = found.puller
        if make is None:
            raise registry.UnknownChannel(f"channel {channel!r} does not pull its messages")
        return self._once("puller", channel, lambda: make(PullDeps(
            self.settings, self.sessions, self.ingress, self.kv, self.locks, self.handoff(channel),
            self._platform_for(found), self.admission)))

    @cached_property
    def admission(self) -> Admission:
        """Rate limits and backpressure for the messages a puller stores (channels.admission)."""
        return Admission.build(self.settings, self.kv, self.sessions, self.settings.redis_timeout_s)

    def outbound(self, channel: str) -> Outbound:
        """The channel's sender, built once per process."""
        found = self.channel(channel)
        return self._once("outbound", channel, lambda: found.outbound(OutboundDeps(
            self.settings, self.bus, self.sessions, self.kv, self.handoff(channel), self._platform_for(found))))

    def _platform_for(self, found: Channel) -> PlatformAPI | None:
        return self.platform if found.platform_api else None

    def _once(self, what: str, channel: str, build: Callable[[], T]) -> T:
        """``build()`` once per process for (what, channel); a build may ask for another (an RLock)."""
        with self._lock:
            if (what, channel) not in self._built:
                self._built[(what, channel)] = build()
            return cast(T, self._built[(what, channel)])

    def close(self) -> None:
        if "faq_sync" in self.__dict__:
            self.faq_sync.stop()
        if "llm" in self.__dict__:
            self.llm.close()
        gray = self._built.get(("gray", ""))
        if isinstance(gray, gray_release.GrayRelease):
            gray.close()
        encoder = self.__dict__.get("encoder")
        if encoder is not None:
            encoder.close()
        if "platform" in self.__dict__:
            self.platform.close()
        if "admission" in self.__dict__:
            self.admission.close()
        if "db" in self.__dict__:
            self.db.dispose()
        if "bus" in self.__dict__:
            getattr(self.bus, "close", lambda: None)()  # the socket bus holds a socket; Redis's has a pool


_settings: Settings | None = None
_runtime: Runtime | None = None
_guard = threading.Lock()


def configure(settings: Settings) -> None:
    global _settings, _runtime
    _settings, _runtime = settings, None


def runtime() -> Runtime:
    global _runtime
    with _guard:
        if _runtime is None:
            if _settings is None:
                raise RuntimeError("workers.runtime.configure(settings) was not called")
            _runtime = Runtime(_settings)
        return _runtime


def reset_after_fork() -> None:
    """Forget resources inherited from a parent process (connections, model handles)."""
    global _runtime
    if _runtime is not None and "db" in _runtime.__dict__:
        _runtime.db.dispose(close=False)  # leave the parent's connections alone
    _runtime = None


def shutdown() -> None:
    """Close this process's resources (connections) and forget them."""
    global _runtime
    if _runtime is not None:
        _runtime.close()
    _runtime = None
