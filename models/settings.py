"""One typed Settings object for a Kefu process.

Read once from ``KEFU_*`` environment variables (and an optional ``.env`` file) by
:func:`load_settings`, then passed down; nothing else in Kefu reads ``os.environ``.

Guarantees:
- With no broker or database configured, the *embedded* backends are chosen: kombu's SQLAlchemy
  transport and a SQLite database, both files under ``data_dir``. ``backend_choice()`` says which
  backends were chosen and why, for the startup log.
- ``check_reliability()`` raises :class:`ConfigError` for a configuration that could lose or
  double-run work (e.g. a Redis visibility timeout shorter than the generation hard limit).
- Any setting, of :class:`Settings` or of a channel's :class:`Section`, can be read from a file instead:
  ``KEFU_<NAME>_FILE=/run/secrets/x`` gives ``KEFU_<NAME>`` the file's text, trailing newline stripped (Docker
  and Kubernetes secrets). Setting both is a :class:`ConfigError` naming both; so is a file that cannot be
  read, naming the variable and the path. A value read from a file is never echoed in an error.

Raises :class:`ConfigError` (a ``ValueError``) with a message an operator can act on.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from models import business_hours
from models.handoff_detect import NEGATIVE_WORDS
from models.intent_file import IntentFileError, check_routes, read_intents_file

DEFAULT_SYSTEM_PROMPT = (
    "你是一名专业、耐心的在线客服助手。默认使用简体中文回答；如果客户用其他语言提问，就用客户的语言回答。"
    "回答要简洁、礼貌、准确，先直接回答问题，再给出必要的下一步。"
    "不知道的事情就如实说明，不要编造订单、价格或政策。"
)
# Told to the model (as a second system block) only where a person can take over (models.dialogue.prompt_hint).
DEFAULT_PROMPT_HANDOFF_HINT = "需要人工处理时，告诉客户可以回复“转人工”。"


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message names the variable to fix."""


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]


class FaqEntry(BaseModel):
    """A question answered instantly, without the model (and passively on WeChat).

    Either a keyword rule (``keywords``: all occur in the text) or a question with its similar questions
    (``question``, ``similar``: matched by models.knowledge.faq_index with a confidence), or both.
    """

    keywords: list[str] = Field(default_factory=list)
    answer: str
    question: str = ""
    similar: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _question_or_keywords(self) -> FaqEntry:
        if not self.question.strip() and not any(k.strip() for k in self.keywords):
            raise ValueError("an FAQ entry needs a question or keywords")
        return self


class HandOffChannel(BaseModel):
    """One channel's hand-off settings (``KEFU_HANDOFF_CHANNELS``); ``None`` follows the global setting."""

    detect: bool = True  # false: requests for a person are not looked for (the model answers them)
    phrases: list[str] = Field(default_factory=list)  # more words for a person, on top of handoff_keywords
    after_failures: NonNegativeInt | None = None
    on_negative: bool | None = None


class FileText(str):
    """A value read from a ``KEFU_<NAME>_FILE`` file: errors never echo it (:func:`_named`)."""


class FileValues(EnvSettingsSource):
    """``KEFU_<NAME>_FILE`` (in the environment or ``.env``): ``KEFU_<NAME>`` read from that file.

    A source of its own, before the environment and ``.env``, parsing values exactly as they do (JSON for lists).
    An empty variable counts as unset. Raises ConfigError when both variables are set, or the file cannot be read.
    """

    def __init__(self, settings_cls: type[BaseSettings], *given: PydanticBaseSettingsSource) -> None:
        self._given: dict[str, str | None] = {}
        for source in reversed(given):  # the environment wins over .env, as for the plain variables
            if isinstance(source, EnvSettingsSource):
                self._given.update(source.env_vars)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> dict[str, str | None]:
        fields = self.settings_cls.model_fields
        found: dict[str, str | None] = {}
        for name in fields:
            variable = f"{self.env_prefix}{name}".lower()
            path = self._given.get(f"{variable}_file")
            if not path or f"{name}_file" in fields:  # unset, or the name of a setting of its own
                continue
            if self._given.get(variable):
                raise ConfigError(f"{variable.upper()} and {variable.upper()}_FILE are both set: keep one "
                                  f"({variable.upper()}_FILE reads the value from a file, e.g. a Docker secret)")
            found[variable] = FileText(_read_value(f"{variable.upper()}_FILE", path))
        return found


def comma_list(value: Any) -> Any:
    """A list variable given as JSON (``["a", "b"]``) or as a comma-separated string (``a, b``); other values as
    they are (a ``mode="before"`` validator for fields marked ``NoDecode``)."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _read_value(variable: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}={path}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None


class _KefuVariables(BaseSettings):
    """Where :class:`Settings` and every :class:`Section` read from: ``KEFU_*`` variables, ``.env``, and
    ``KEFU_<NAME>_FILE`` (:class:`FileValues`)."""

    model_config = SettingsConfigDict(env_prefix="KEFU_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = FileValues(settings_cls, env_settings, dotenv_settings)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings  # a file beats an empty variable


class Section(_KefuVariables):
    """Settings that one part of Kefu owns (a channel's accounts), read from the same ``KEFU_*`` variables and
    ``.env`` file as :class:`Settings`, through :meth:`Settings.section`. A new channel declares its own section
    in its own module instead of adding fields here."""


SectionT = TypeVar("SectionT", bound=Section)


class Settings(_KefuVariables):
    _sections: dict[type[Section], Section] = PrivateAttr(default_factory=dict)
    # values of a Section's fields given in-process (Settings(wechat_accounts=[...])), handed to that section; the
    # environment and .env are read by the section itself, so they are parsed the way its fields say
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        given = {k: v for k, v in values.items() if not k.startswith("_") and k not in type(self).model_fields}
        super().__init__(**values)
        self._given = given

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Path("var")  # the embedded database, broker and KV files, metrics files, generated keys
    database_url: str | None = None  # SQLAlchemy URL (postgresql+psycopg://…); unset: SQLite under data_dir
    # the owner role's URL, for `kefu migrate`/`kefu downgrade` only (docs/audit.md); unset: KEFU_DATABASE_URL
    migration_database_url: str | None = None
    # the runtime role the migrations GRANT to (INSERT/SELECT only on the audit log); "": single-role mode
    database_app_role: str = ""
    broker_url: str | None = None  # Celery broker, e.g. redis://redis:6379/0; unset: SQLite under data_dir
    redis_url: str | None = None  # bus, context cache, locks; defaults to broker_url when that is Redis
    secret_key: SecretStr | None = None  # HMAC key for visitor tokens; generated under data_dir if unset

    # --- gateway -----------------------------------------------------------------------------
    host: str = "127.0.0.1"  # the gateway's listen address (the AudioSocket listener's too)
    port: Annotated[int, Field(ge=1, le=65535)] = 8000  # the gateway's HTTP port
    # same-origin is always allowed; NoDecode: the env value is "a,b" or JSON, parsed by _split_origins
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    web_account: str = "default"  # the web site this gateway serves (one account per deployment)
    max_text_chars: int = 2000  # a longer customer message is refused (413) or, from a platform, cut
    max_body_bytes: PositiveInt = 64 * 1024  # the largest HTTP body or WebSocket frame the gateway reads
    visitor_token_ttl_s: PositiveInt = 30 * 24 * 3600  # how long a web visitor token is valid
    # the gateway's longest wait for the broker or Redis in one request (publish, kv, bus); then it goes on without
    publish_timeout_s: PositiveSeconds = 1.0
    gateway_threads: PositiveInt = 4  # threads for blocking database/broker calls in each gateway process
    # addresses whose X-Forwarded-For the gateway believes, comma-separated, "*" for any (uvicorn's
    # forwarded_allow_ips): behind a reverse proxy, the proxy's address, so the per-address rate limit and the
    # console's login throttle count the client and not the proxy; unset: uvicorn's FORWARDED_ALLOW_IPS or 127.0.0.1
    forwarded_allow_ips: str | None = None
    # The admin API (channels/admin.py: knowledge base, approved answers) takes this bearer token; unset: it is off
    admin_token: SecretStr | None = None
    admin_max_upload_bytes: PositiveInt = 20 * 1024 * 1024  # a document imported through the admin API; larger: 413

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 24`): it guards the knowledge "
                             "base")
        return value

    # --- WeChat / WeCom ----------------------------------------------------------------------------
    wechat_api_base: str = "https://api.weixin.qq.com"  # WeChat API base URL (a fake's in tests)
    wecom_api_base: str = "https://qyapi.weixin.qq.com"  # WeCom API base URL (a fake's in tests)
    wechat_timestamp_window_s: PositiveInt = 300  # a callback timestamp further off is refused (replay)
    wechat_max_body_bytes: PositiveInt = 64 * 1024  # the largest WeChat/WeCom callback body read
    wechat_http_timeout_s: PositiveSeconds = 5.0  # each call to the WeChat/WeCom API
    faq: list[FaqEntry] = Field(default_factory=list)  # JSON list in KEFU_FAQ
    # An FAQ entry answers without the model at or above this confidence (models.knowledge.faq_index; 0..1, chosen
    # on real paraphrases in bench/faq_eval.py); below it Kefu abstains and the model answers.
    faq_threshold: Annotated[float, Field(ge=0, le=1)] = 0.3
    # Dense retrieval (workers.llm.embedding; docs/knowledge.md "Dense retrieval"): an embedding GGUF such as
    # Qwen3-Embedding-0.6B or bge-m3, loaded by each LLM worker (never the gateway); unset: lexical retrieval only.
    embedding_model_path: Path | None = None
    # How token vectors are pooled into one: "model" takes the GGUF's own pooling type (converted embedding models
    # carry one); a GGUF without one needs "last" (Qwen3-Embedding), "cls" (bge-m3) or "mean".
    embedding_pooling: Literal["model", "last", "cls", "mean"] = "model"
    # Put before a customer's question, never before passages: Qwen3-Embedding expects "Instruct: <task>\nQuery:";
    # bge-m3 none.
    embedding_query_instruction: str = ""
    # A passage found by the embedding model alone is given to the model only at or above this cosine; 0: any that
    # points the question's way (no floor measured for a real model yet: set one for yours).
    embedding_min_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.0
    # With an embedding model, the worker answers a question the lexical FAQ abstained on with the FAQ entry whose
    # fused confidence (models.knowledge.fused_faq, 0..1) reaches this; 0.5 is half-way between "as close as the
    # FAQ's other entries" and "as close as its own similar questions", not a figure measured on a real model.
    faq_fused_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    # When the model's queue is this long (seconds, as estimated by the LLM workers), a WeChat callback gets
    # a passive "please wait" at once instead of silence; 0 turns it off.
    busy_notice_after_s: NonNegativeSeconds = 4.0
    # The passive reply a WeChat callback gets when the model's queue is long (busy_notice_after_s).
    busy_notice: str = "消息已收到，当前咨询的人较多，客服正在为您处理，请稍候。"
    # Requests for a person are detected in the customer's own words (models.handoff_detect); these are the
    # operator's extra words for a person ("找小二"), read the same way (declines and mentions still count).
    handoff_keywords: list[str] = Field(default_factory=list)
    # The notice a customer gets when their conversation goes to a person.
    handoff_reply: str = "好的，正在为您转接人工客服，请稍候。"
    # Asked when a message may be a request for a person ("你是机器人吗"); a "是的/对/嗯/需要" after it hands off.
    handoff_ask_back_reply: str = "您是需要转接人工客服吗？"
    # After this many fallback replies in a row the customer's next message goes to a person (0: never).
    handoff_after_failures: NonNegativeInt = 2
    # The notice when a run of failed answers hands the conversation to a person.
    handoff_failures_reply: str = "抱歉，我没能解答您的问题，正在为您转接人工客服，请稍候。"
    # The answer after a run of failed answers where no person can take over.
    handoff_failures_unavailable_reply: str = ("抱歉，我没能解答您的问题，这里也暂时没有人工客服。"
                                               "您可以换个说法再问一次，或稍后再试。")
    # Clearly negative wording ("垃圾", "气死", "投诉"…) hands the conversation to a person where one can take it.
    handoff_on_negative: bool = True
    # Words of clear displeasure that hand the conversation to a person (handoff_on_negative).
    handoff_negative_words: list[str] = Field(default_factory=lambda: list(NEGATIVE_WORDS))
    # The notice when displeasure hands the conversation to a person.
    handoff_negative_reply: str = "非常抱歉给您带来不好的体验，正在为您转接人工客服，请稍候。"
    # Per channel (JSON in KEFU_HANDOFF_CHANNELS): {"web": {"detect": false}, "wecom_kf": {"phrases": ["找小二"],
    # "after_failures": 3, "on_negative": false}}; what a channel leaves out follows the settings above.
    handoff_channels: dict[str, HandOffChannel] = Field(default_factory=dict)
    # where no person can take over (an official account without human_service, a WeCom app)
    handoff_unavailable_reply: str = "抱歉，这里暂时没有人工客服。您可以继续向我提问，我会尽力为您解答。"
    # Sent when the model cannot answer (failure, deadline, empty output): nothing goes unanswered. The hint is
    # added only where a person can take over (models.dialogue.fallback_reply).
    fallback_reply: str = "抱歉，我暂时无法回答这个问题，请换个说法再问一次，或稍后再试。"
    # Added to fallback_reply where a person can take over.
    fallback_handoff_hint: str = "如需人工服务，请回复“转人工”。"
    prompt_handoff_hint: str = DEFAULT_PROMPT_HANDOFF_HINT  # "" never mentions a person to the model
    human_session_ttl_s: PositiveSeconds = 1800.0  # official account: a conversation stays with its person this long after
                                         # the customer's last message, unless the platform reports it closed

    # --- the human desk: the agent console's waiting queue (models.desk, docs/console.md) -------------------
    # Channels whose requests for a person go to the console's waiting queue while the desk is open (within
    # KEFU_DESK_HOURS and an agent online); outside them, the channel's own hand-off (an official account's staff,
    # the kf pool), else the after-hours or no-person reply. The phone transfers calls itself (KEFU_PHONE_TRANSFER_TO).
    desk_channels: list[str] = Field(default_factory=lambda: ["web", "wechat_mp", "wecom", "wecom_kf"])
    # "mon-fri 09:00-18:00; sat 10:00-16:00" in desk_timezone (models.business_hours); empty: always open
    desk_hours: str = ""
    # The time zone KEFU_DESK_HOURS is read in (an IANA name).
    desk_timezone: str = "Asia/Shanghai"
    # An agent counts as present this long after their console's last sign of life (it sends one every 15 s).
    desk_presence_s: PositiveSeconds = 45.0
    # The answer to a request for a person outside KEFU_DESK_HOURS (no other hand-off available).
    desk_after_hours_reply: str = ("您好，现在是非工作时间，人工客服暂时无法接入。您可以继续向我提问，"
                                   "或在工作时间再联系我们。")
    # After an agent hands a conversation back, the customer is asked for a score (web: a 1-5 widget; WeChat,
    # WeCom, kf: a reply with a number). Empty turns the request off.
    csat_request_reply: str = "本次人工服务已结束。请为我们的服务打分：回复 1-5 的数字（5 分为非常满意）。"
    # The answer to a score (1-5) given after the request.
    csat_thanks_reply: str = "感谢您的评价！如还有其他问题，欢迎随时咨询。"
    # Console logins: a session lasts this long; this many failed logins per username (and per client address)
    # within console_login_window_s lock further attempts until the window passes.
    console_session_s: PositiveSeconds = 12 * 3600.0
    console_login_attempts: PositiveInt = 5  # failed logins per username and per address before a lock
    console_login_window_s: PositiveSeconds = 300.0  # the window those failures are counted in (and the lock lasts)
    # Voice messages without the platform's Recognition: a worker downloads (media/get), decodes and transcribes
    # them with the configured recognizer (KEFU_SPEECH_PROVIDER). When that fails, the customer gets this reply.
    voice_unclear_reply: str = "抱歉，我没有听清您的语音。请您再说一遍，或者直接打字告诉我您的问题。"
    voice_max_bytes: PositiveInt = 2 * 1024 * 1024  # a 60-second WeChat voice is about 100 KB of AMR
    voice_max_seconds: PositiveSeconds = 120.0  # WeChat voices last at most 60 s; anything longer is cut here
    # The longest a voice file's decoding may take before the unclear-voice reply.
    voice_decode_timeout_s: PositiveSeconds = 15.0
    # transient media/get failures, retried after 1, 2, 4, 8 s; then the reply above
    voice_download_retries: NonNegativeInt = 4

    # --- intents (models.intents, docs/intents.md) -------------------------------------------------
    # The operator's own intents: a JSON list of {"name", "description", "examples", "keywords"} (YAML when the name
    # ends in .yaml/.yml), beside the built-in ones (order_status, shipping, return_refund, …); checked at start-up.
    intents_file: Path | None = None
    # Nearest-example confidence (0..1) an intent needs when no rule matched; below it the message is out_of_scope
    # (source "none") and, with the model on, the model is asked. Chosen on tests/data/intents (bench/intent_eval.py).
    intent_threshold: Annotated[float, Field(ge=0, le=1)] = 0.3
    # The model picks a label (a llama.cpp grammar allows only the labels) for messages the rules could not place:
    # "auto": when the model is a Qwen3 GGUF (not for the SmolLM2 demo), "on", "off".
    intent_model: Literal["auto", "on", "off"] = "auto"
    # JSON object label -> action, applied on every channel: "hand_off" (to a person, or the honest answer where
    # none can take over) or "answer:<text>" (that fixed reply), e.g. {"complaint": "hand_off"}.
    intent_routes: dict[str, str] = Field(default_factory=dict)

    @field_validator("desk_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("desk_hours")
    @classmethod
    def _schedule(cls, value: str) -> str:
        business_hours.parse(value)  # a ValueError naming the part that does not parse
        return value

    @field_validator("intent_routes")
    @classmethod
    def _route_actions(cls, value: dict[str, str]) -> dict[str, str]:
        for label, action in value.items():
            if action != "hand_off" and not (action.startswith("answer:") and action[len("answer:"):].strip()):
                raise ValueError(f"the action for {label!r} must be \"hand_off\" or \"answer:<reply text>\"")
        return value

    # --- personal data and moderation (docs/privacy.md) -------------------------------------------
    # Logs, audit details and the model's replies are always masked. The customer's stored text (and the
    # context cache and prompts built from it): "sensitive" masks ID and bank-card numbers, "all" every kind
    # (mobile, e-mail, address too), "none" nothing; true/false mean all/none.
    pii_mask_stored: Literal["none", "sensitive", "all"] = "sensitive"
    # lines "词 action" (action: refuse, mask, hand_off; # comments), read again when the file changes
    moderation_file: Path | None = None
    moderation_url: str | None = None  # an HTTP moderation endpoint (POST {"text"} -> {"action", "rule"})
    # The moderation HTTP check's timeout (KEFU_MODERATION_URL).
    moderation_timeout_s: PositiveSeconds = 2.0
    moderation_fail_closed: bool = False  # endpoint down or slow: refuse (true) or let the message through
    # The answer to a message a moderation rule refuses.
    moderation_refuse_reply: str = "抱歉，这个问题我无法回答。如有其他问题，请随时告诉我。"

    @field_validator("pii_mask_stored", mode="before")
    @classmethod
    def _stored_alias(cls, value: Any) -> Any:
        aliases = {"true": "all", "1": "all", "yes": "all", "false": "none", "0": "none", "no": "none"}
        if isinstance(value, bool):
            return "all" if value else "none"
        return aliases.get(value.strip().lower(), value.strip().lower()) if isinstance(value, str) else value

    @field_validator("moderation_url")
    @classmethod
    def _moderation_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://moderation:8080/check")
        return value or None

    # --- speech (the phone, and WeChat voice messages the platform did not transcribe) ----------
    # "local": espeak-ng, and sherpa-onnx when KEFU_LOCAL_ASR_MODEL_DIR is set, else pocketsphinx (English only);
    # "nls": Aliyun NLS recognition and synthesis, with the local voice as the fallback when NLS synthesis fails
    speech_provider: Literal["local", "nls"] = "local"
    # a sherpa-onnx model directory (e.g. a Mandarin paraformer or SenseVoice export); unset: pocketsphinx
    local_asr_model_dir: Path | None = None
    # "realtime": the NLS WebSocket protocol (SpeechTranscriber streams while the caller speaks);
    # "rest": one-sentence recognition and REST synthesis, one HTTP request each
    nls_mode: Literal["realtime", "rest"] = "realtime"
    # Aliyun NLS real-time speech WebSocket endpoint.
    nls_ws_url: str = "wss://nls-gateway-cn-shanghai.aliyuncs.com/ws/v1"
    # Aliyun AccessKey id that obtains NLS tokens (aliyun-python-sdk-core).
    nls_access_key_id: str | None = None
    # Aliyun AccessKey secret (KEFU_NLS_ACCESS_KEY_SECRET_FILE for a secret file).
    nls_access_key_secret: SecretStr | None = None
    # The NLS project's appkey.
    nls_appkey: str | None = None
    # The rate recognition audio is sent at: the appkey's model's (NLS console: 8000 telephone, 16000 general).
    # Unset: the audio's own rate (a phone call's 8000 goes out as it came in, as Aliyun advises).
    nls_asr_sample_rate: Literal[8000, 16000] | None = None
    # The NLS region (cn-shanghai…).
    nls_region: str = "cn-shanghai"
    # Where NLS tokens are created (CreateToken).
    nls_meta_endpoint: str = "nls-meta.cn-shanghai.aliyuncs.com"
    # The token endpoint's protocol.
    nls_meta_protocol: Literal["https", "http"] = "https"
    # The NLS REST gateway (one-sentence recognition, synthesis).
    nls_gateway: str = "https://nls-gateway-cn-shanghai.aliyuncs.com"
    # The NLS voice that speaks answers on the phone.
    nls_voice: str = "xiaoyun"

    # --- model ---------------------------------------------------------------------------------
    model_path: Path | None = None  # the chat model's GGUF; unset: model_repo/model_file, else the demo model
    model_repo: str | None = None  # e.g. "Qwen/Qwen3-4B-GGUF" (needs network and the `hub` extra)
    model_file: str | None = None  # e.g. "Qwen3-4B-Q4_K_M.gguf"
    n_ctx: PositiveInt = 4096  # context window in tokens, per conversation (batched: n_slots times this)
    n_batch: PositiveInt = 512  # llama.cpp batch: prompt tokens evaluated per decode call
    n_threads: int | None = None  # CPU threads for llama.cpp; unset: every core this process may use
    n_gpu_layers: int | None = None  # None: all layers when the CUDA build is present, else 0
    temperature: float = 0.7  # sampling; the defaults are Qwen3's recommended values without thinking
    top_p: float = 0.8  # sampling (Qwen3's recommended value)
    top_k: int = 20  # sampling (Qwen3's recommended value)
    min_p: float = 0.0  # sampling (Qwen3's recommended value)
    presence_penalty: float = 1.5  # sampling (Qwen3's recommended value for quantized models)
    max_tokens: PositiveInt = 512  # the longest answer, in tokens
    seed: int | None = None  # sampling seed; unset: random
    enable_thinking: bool = False  # Qwen3's thinking mode (off: an empty think block, the answer starts at once)
    # "batched": every active conversation of a worker process in each decode step (continuous
    # batching, shared system-prompt KV); "simple": one generation at a time (the baseline).
    engine: Literal["batched", "simple"] = "batched"
    # llama.cpp's extra CPU buffer types (AMX, repacked weights); "auto": off on AMX CPUs, where they crash
    # the process with llama-cpp-python 0.3.36 (workers/llm/cpu_buffers.py)
    llama_extra_buffers: Literal["auto", "on", "off"] = "auto"
    n_slots: int = 4  # conversations decoded together by the batched engine; the llm worker runs this many threads
    prefill_chunk: int = 256  # prompt tokens evaluated per step while other conversations are generating
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # the model's instructions
    context_turns: int = 5  # earlier turns of the conversation given to the model
    context_ttl_s: PositiveInt = 24 * 3600  # how long a conversation's cached context is kept

    # --- model backend (workers/llm/backends.py, docs/models.md) -------------------------------------
    # "local": the GGUF above through llama-cpp-python; "openai": an OpenAI-compatible /v1/chat/completions upstream
    # (vLLM, llama-server, a cloud endpoint) at KEFU_UPSTREAM_URLS, streamed, with the same deadline and fallback
    llm_backend: Literal["local", "openai"] = "local"
    # The upstream's base URLs, each ending in /v1 (comma list or JSON); several: a fleet, taken round-robin, a dead
    # one or a 5xx skipped before any text came.
    upstream_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    upstream_model: str | None = None  # the model id to ask the upstream for (its GET /v1/models lists them)
    upstream_api_key: SecretStr | None = None  # sent as "Authorization: Bearer …"; unset: no Authorization header
    # The upstream's longest wait for a connection and for each streamed chunk; the generation deadline cuts it shorter.
    upstream_timeout_s: PositiveSeconds = 30.0

    @field_validator("upstream_urls", mode="before")
    @classmethod
    def _split_upstream_urls(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("upstream_urls")
    @classmethod
    def _upstream_url_shape(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} must be an http:// or https:// base URL ending in /v1, "
                                 "e.g. http://vllm:8000/v1")
        return [url.rstrip("/") for url in value]

    # --- gray release: a second model on part of the traffic (workers/gray_release.py, docs/gray-release.md) ---
    # The canary: a GGUF path, or a backend as JSON ({"kind": "openai", "urls": [...], "model": "..."}); unset: none
    canary_backend: str | None = None
    canary_api_key: SecretStr | None = None  # the canary's API key (openai kind), sent as Bearer; never in the JSON
    # The share of conversations (0..1) the canary answers, chosen by a stable hash of the conversation id (sticky)
    canary_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.10
    # The canary is taken out automatically when more than this share of its answers fell back within the window
    canary_max_error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    canary_window_s: PositiveInt = 300  # the sliding window the error rate is counted over (all workers together)
    canary_min_requests: PositiveInt = 20  # the canary is judged only with at least this many answers in the window

    # --- reliability ----------------------------------------------------------------------------
    # A crashed worker's messages are answered about a minute later: Redis hands them back after the
    # visibility timeout and the sweeper re-publishes them after requeue_after_s (+ one sweep interval),
    # both just above the hard limit; the conversation lock and reply UNIQUE(inbound_id) make the two one.
    generation_soft_limit_s: PositiveInt = 30  # the customer gets an answer (partial or fallback) within this
    generation_hard_limit_s: PositiveInt = 40  # Celery's hard limit: an answer's task is killed past it
    visibility_timeout_s: PositiveInt = 60  # Redis redelivers an unacknowledged task after this (> hard limit)
    delivery_max_retries: NonNegativeInt = 8  # transient send failures retried with backoff, then "exhausted"
    requeue_after_s: PositiveInt = 60  # an inbound still unanswered after this is published again
    redeliver_after_s: PositiveInt = 60  # a reply still undelivered after this is sent again
    sweep_interval_s: PositiveInt = 15  # how often the sweeper looks for unfinished messages and deliveries
    redis_timeout_s: PositiveSeconds = 5.0  # workers' Redis socket timeout (the gateway: publish_timeout_s)
    sql_statement_timeout_ms: PositiveInt = 10_000  # statement_timeout of every connection (SQLite: busy timeout)
    db_connect_timeout_s: Annotated[int, Field(ge=2)] = 2  # libpq's connect_timeout (whole seconds, at least 2)
    # the gateway's wait for any one database answer; past it the connection is cut and the request gets 503
    db_response_timeout_s: PositiveSeconds = 2.0
    db_retry_after_s: PositiveSeconds = 2.0  # after such a timeout the gateway answers 503 at once for this long
    # after a publish failed, the gateway stops trying for this long (messages wait for the sweeper)
    publish_retry_after_s: PositiveSeconds = 5.0
    web_max_sockets_per_visitor: PositiveInt = 5  # the oldest socket is closed (4008) when a visitor opens one more

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # every Kefu process's log level

    # --- admission control: rate limits and backpressure (channels/admission.py, docs/admission.md) ------------
    # per client address, across the web chat's new sessions and messages and the API's requests. Every limit here is
    # in the `limits` notation, several separated by ";" ("5 per 2 seconds;60 per minute"), "" turns it off, and is
    # counted in Redis when Kefu has one, else in each process's memory. Behind a load balancer set
    # KEFU_FORWARDED_ALLOW_IPS to its address, or every visitor counts as the balancer.
    rate_limit_ip: str = "20 per 2 seconds;300 per minute"
    rate_limit_visitor: str = "5 per 5 seconds;30 per minute"  # per web chat visitor: messages (HTTP and WebSocket)
    # per customer of the WeChat official account (openid), WeCom app (userid), WeChat kf (external userid), webhook
    # user and phone caller: messages that would go to the model (over it: stored and answered with rate_limited_reply)
    rate_limit_peer: str = "5 per 5 seconds;30 per minute"
    rate_limit_api_key: str = "20 per 1 second;600 per 1 minute"  # per API key of the OpenAI/Ollama-compatible API
    # new model work is refused while the LLM workers' estimated wait is above this (seconds); 0: never
    backpressure_wait_s: NonNegativeSeconds = 60.0
    # the reply a chat customer gets for a message over a rate limit (stored, not sent to the model)
    rate_limited_reply: str = "您发送消息太频繁了，这条消息客服暂时无法处理，请稍等片刻再发送您的问题。"
    # the reply a chat customer gets for a message refused by backpressure (stored, not sent to the model)
    backpressure_reply: str = "当前咨询的人太多，客服暂时无法处理您的这条消息，请稍后再发送您的问题，给您带来不便敬请谅解。"

    @field_validator("rate_limit_ip", "rate_limit_visitor", "rate_limit_peer", "rate_limit_api_key")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        from limits import parse_many  # the admission's own library (channels/admission.py)

        if value.strip():
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a rate limit: write e.g. '5 per 2 seconds;60 per minute' "
                                 "(several separated by ';'; '' turns it off)") from None
        return value

    # --- observability (docs/observability.md) ----------------------------------------------------
    # each `kefu worker` serves its Prometheus metrics on this port (the gateway on its own /metrics); 0: off
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    worker_metrics_host: str = "127.0.0.1"  # the address the worker's metrics listen on (0.0.0.0 in a container)
    # text: "time level logger: message"; json: one JSON object a line (time, level, logger, message, request_id,
    # conversation_id), for a log collector (models/infra/logs.py)
    log_format: Literal["text", "json"] = "text"
    # the gateway logs one line per HTTP request (method, path, status, duration, request id) on logger
    # kefu.access; false: none (or set that logger's level)
    access_log: bool = True

    @field_validator("nls_asr_sample_rate", mode="before")
    @classmethod
    def _rate_from_text(cls, value: Any) -> Any:
        """KEFU_NLS_ASR_SAMPLE_RATE=16000 arrives as text; the Literal would not take it as a number."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_app_role")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("must be a PostgreSQL role name: lower-case letters, digits and _, e.g. kefu_app")
        return value

    @field_validator("database_url", "migration_database_url", "broker_url", "redis_url")
    @classmethod
    def _has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must be a URL with a scheme, e.g. postgresql+psycopg://kefu@db/kefu, "
                             "redis://redis:6379/0")
        return value

    @field_validator("canary_backend")
    @classmethod
    def _canary_shape(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.lstrip().startswith("{"):
            try:
                found = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not valid JSON ({exc}): give a GGUF path or a backend object") from None
            if not isinstance(found, dict) or "api_key" in found:
                raise ValueError("must be a JSON object without api_key (put the key in KEFU_CANARY_API_KEY)")
        return value.strip()

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return comma_list(value)

    # --- derived -------------------------------------------------------------------------------
    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kefu.sqlite').resolve()}"

    @property
    def embedded_broker_file(self) -> Path:
        return (self.data_dir / "broker.sqlite").resolve()

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"kefu-sqla+sqlite:///{self.embedded_broker_file}"

    @property
    def effective_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def broker_is_redis(self) -> bool:
        return self.effective_broker_url.startswith(("redis://", "rediss://"))

    def backend_choice(self) -> list[str]:
        """One line per backend: what was chosen and why (for the startup log and `kefu config`)."""
        lines = []
        if self.embedded_broker:
            lines.append(f"broker: embedded SQLite queue at {self.data_dir / 'broker.sqlite'} (KEFU_BROKER_URL unset)")
        else:
            lines.append(f"broker: {mask_url(self.effective_broker_url)} (KEFU_BROKER_URL)")
        if self.embedded_database:
            lines.append(f"database: embedded SQLite at {self.data_dir / 'kefu.sqlite'} (KEFU_DATABASE_URL unset)")
        else:
            lines.append(f"database: {mask_url(self.effective_database_url)} (KEFU_DATABASE_URL)")
        redis = self.effective_redis_url
        if redis:
            lines.append(f"bus/context/locks: Redis {mask_url(redis)}")
        else:
            lines.append(
                f"bus/context/locks: embedded (local sockets under {self.data_dir / 'bus'}, in-process cache "
                "and locks; no Redis configured)"
            )
        return lines

    def check_reliability(self) -> None:
        """Raise ConfigError for a combination that could lose or double-run work, or cannot start."""
        self._check_time_limits()
        self._check_model_and_speech()
        self._check_backend()
        try:
            custom = read_intents_file(self.intents_file) if self.intents_file is not None else ()
            check_routes(self.intent_routes, custom)
        except IntentFileError as exc:
            raise ConfigError(str(exc)) from None
        if self.moderation_file is not None and not self.moderation_file.is_file():
            raise ConfigError(f"KEFU_MODERATION_FILE={self.moderation_file} is not a file: every message and reply "
                              "would go unmoderated (create it, even empty, or unset the variable; docs/privacy.md)")

    def _check_time_limits(self) -> None:
        if self.generation_soft_limit_s >= self.generation_hard_limit_s:
            raise ConfigError(
                "KEFU_GENERATION_SOFT_LIMIT_S must be below KEFU_GENERATION_HARD_LIMIT_S "
                f"(got {self.generation_soft_limit_s} >= {self.generation_hard_limit_s})"
            )
        if self.broker_is_redis and self.visibility_timeout_s <= self.generation_hard_limit_s:
            raise ConfigError(
                "KEFU_VISIBILITY_TIMEOUT_S must be longer than KEFU_GENERATION_HARD_LIMIT_S: Redis would "
                "hand a still-running generation to a second worker "
                f"(got {self.visibility_timeout_s} <= {self.generation_hard_limit_s})"
            )
        if self.requeue_after_s <= self.generation_hard_limit_s:
            raise ConfigError(
                "KEFU_REQUEUE_AFTER_S must be longer than KEFU_GENERATION_HARD_LIMIT_S "
                f"(got {self.requeue_after_s} <= {self.generation_hard_limit_s})"
            )

    def _check_backend(self) -> None:
        if self.llm_backend == "openai" and not (self.upstream_urls and self.upstream_model):
            raise ConfigError("KEFU_LLM_BACKEND=openai needs KEFU_UPSTREAM_URLS (the server's base URL ending in /v1, "
                              "e.g. http://vllm:8000/v1) and KEFU_UPSTREAM_MODEL (the model id it serves)")

    def _check_model_and_speech(self) -> None:
        if self.model_repo and not self.model_file and not self.model_path:
            raise ConfigError("KEFU_MODEL_REPO needs KEFU_MODEL_FILE (the GGUF file name inside the repo)")
        if not 1 <= self.n_slots <= 256 or self.prefill_chunk < 1:
            raise ConfigError("KEFU_N_SLOTS must be 1-256 and KEFU_PREFILL_CHUNK >= 1")
        if self.max_text_chars < 1 or self.context_turns < 0:
            raise ConfigError("KEFU_MAX_TEXT_CHARS must be >= 1 and KEFU_CONTEXT_TURNS >= 0")
        if self.local_asr_model_dir is not None and not (self.local_asr_model_dir / "tokens.txt").is_file():
            raise ConfigError(f"KEFU_LOCAL_ASR_MODEL_DIR={self.local_asr_model_dir} holds no tokens.txt: point it at an "
                              "unpacked sherpa-onnx model directory (docs/telephony.md)")
        if self.speech_provider == "nls" and not (self.nls_access_key_id and self.nls_access_key_secret and self.nls_appkey):
            raise ConfigError("KEFU_SPEECH_PROVIDER=nls needs KEFU_NLS_ACCESS_KEY_ID, KEFU_NLS_ACCESS_KEY_SECRET and "
                              "KEFU_NLS_APPKEY (the project's appkey in the NLS console)")

    def section(self, model: type[SectionT]) -> SectionT:
        """The section ``model`` of this process's settings: read once from the environment, with the values
        given to this Settings in-process taking precedence. Raises ConfigError naming what to fix."""
        found = self._sections.get(model)
        if found is None:
            given = {k: v for k, v in self._given.items() if k in model.model_fields}
            try:
                found = model(**given)
            except ValidationError as exc:
                raise ConfigError("; ".join(_named(error) for error in exc.errors())) from exc
            except SettingsError as exc:  # a variable that is not even JSON
                raise ConfigError(_unparsable(exc)) from exc
            self._sections[model] = found
        assert isinstance(found, model)
        return found

    def signing_key(self) -> bytes:
        """The visitor-token HMAC key; generated once into ``data_dir/secret.key`` when not configured."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        if not self.embedded_database:
            raise ConfigError(
                "set KEFU_SECRET_KEY (the same value on every gateway): with a shared database, a key generated "
                "per machine would make gateways reject each other's visitor tokens"
            )
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            candidate = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
            candidate.write_text(secrets.token_urlsafe(32))
            candidate.chmod(0o600)
            try:
                path.hardlink_to(candidate)  # atomic: two processes starting together agree on one key
            except FileExistsError:
                pass
            finally:
                candidate.unlink()
        return path.read_text().strip().encode()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with ``update`` applied (a section's values too); its sections are read afresh."""
        update = dict(update or {})
        given = {k: update.pop(k) for k in list(update) if k not in type(self).model_fields}
        copy = super().model_copy(update=update, deep=deep)
        copy._given = {**self._given, **given}
        copy._sections = {}
        return copy

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, with every section read so far: secrets and URL passwords masked."""
        dump = self.model_dump()
        for section in self._sections.values():
            dump.update(section.model_dump())
        out: dict[str, Any] = {name: _masked(value) for name, value in dump.items()}
        out["effective_database_url"] = mask_url(self.effective_database_url)
        out["effective_broker_url"] = mask_url(self.effective_broker_url)
        redis = self.effective_redis_url
        out["effective_redis_url"] = mask_url(redis) if redis else None
        return out


def _unparsable(error: SettingsError) -> str:
    """A section variable that could not be decoded (JSON), naming it."""
    field = re.search(r'field "(\w+)"', str(error))
    where = f"KEFU_{field.group(1).upper()}" if field else "a KEFU_* variable"
    if field and f'source "{FileValues.__name__}"' in str(error):
        where += "_FILE's file"
    cause = f": {error.__cause__}" if error.__cause__ is not None else ""
    return f"{where} is not valid JSON{cause}"


def _named(error: Any) -> str:
    """One validation error, naming the variable to fix: ``KEFU_WECOM_APPS[0].aes_key: …``."""
    location = list(error.get("loc", ()))
    where = f"KEFU_{str(location[0]).upper()}" if location else "KEFU_*"
    for part in location[1:]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    said = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    given = error.get("input")
    last = str(location[-1]) if location else ""
    secret = last in ("secret", "token", "aes_key") or "secret" in last or "password" in last
    if isinstance(given, int | float | str) and not secret and not isinstance(given, FileText) and len(str(given)) <= 80:
        said += f" (got {given!r})"
    return f"{where}: {said}"


_SECRET_QUERY = re.compile(r"([?&][^=&]*(?:token|key|secret|sig|pass)[^=&]*=)[^&#]*", re.IGNORECASE)


def _masked(value: Any) -> Any:
    """A setting's value fit to print: secrets starred, URL passwords and secret-looking query values hidden."""
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else None
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _SECRET_QUERY.sub(r"\1****", mask_url(value))
    if isinstance(value, Path):
        return str(value)
    return value


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


def load_settings(**overrides: Any) -> Settings:
    """Build the process's Settings from the environment; raise ConfigError if it is unsafe."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("; ".join(_named(error) for error in exc.errors())) from exc
    except SettingsError as exc:  # a list setting that is not even JSON
        raise ConfigError(_unparsable(exc)) from exc
    settings.check_reliability()
    return settings
