"""Tests for models.settings: embedded defaults, derived URLs, reliability checks, masking, the signing key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from channels import registry, wecom, wecom_kf
from models.settings import ConfigError, Settings, load_settings, mask_url

pytestmark = pytest.mark.usefixtures("clean_env")


def test_embedded_backends_are_chosen_without_urls(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "var")
    assert s.embedded_broker and s.embedded_database
    base = (tmp_path / "var").resolve()
    assert s.effective_database_url == f"sqlite:///{base / 'kefu.sqlite'}"
    assert s.effective_broker_url == f"kefu-sqla+sqlite:///{base / 'broker.sqlite'}"
    assert s.effective_redis_url is None
    assert not s.broker_is_redis
    broker, database, bus = s.backend_choice()
    assert broker.startswith("broker: embedded") and "KEFU_BROKER_URL unset" in broker
    assert database.startswith("database: embedded") and "KEFU_DATABASE_URL unset" in database
    assert "embedded" in bus and "no Redis configured" in bus


def test_relative_data_dir_resolves_against_cwd(clean_env: Path) -> None:
    s = Settings()
    assert s.data_dir == Path("var")
    assert s.effective_database_url == f"sqlite:///{clean_env.resolve() / 'var' / 'kefu.sqlite'}"


@pytest.mark.parametrize("broker", ["redis://:pw@cache:6379/0", "rediss://cache:6380/2"])
def test_redis_url_is_derived_from_a_redis_broker(tmp_path: Path, broker: str) -> None:
    s = Settings(data_dir=tmp_path, broker_url=broker)
    assert s.effective_redis_url == broker
    assert s.broker_is_redis and not s.embedded_broker


def test_explicit_redis_url_wins_over_broker(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url="redis://a:6379/0", redis_url="redis://b:6379/3")
    assert s.effective_redis_url == "redis://b:6379/3"


def test_non_redis_broker_gives_no_redis(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url="amqp://guest:guest@rabbit//")
    assert s.effective_redis_url is None
    assert not s.broker_is_redis
    assert "no Redis configured" in s.backend_choice()[2]


def test_backend_choice_names_the_variables_and_masks_passwords(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        broker_url="redis://:brokerpw@cache:6379/0",
        database_url="postgresql+psycopg://kefu:dbpw@db:5432/kefu",
    )
    lines = s.backend_choice()
    text = "\n".join(lines)
    assert "brokerpw" not in text and "dbpw" not in text
    assert lines[0] == "broker: redis://:****@cache:6379/0 (KEFU_BROKER_URL)"
    assert lines[1] == "database: postgresql+psycopg://kefu:****@db:5432/kefu (KEFU_DATABASE_URL)"
    assert lines[2] == "bus/context/locks: Redis redis://:****@cache:6379/0"


def test_defaults_pass_the_reliability_check(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert isinstance(s, Settings)
    load_settings(data_dir=tmp_path, broker_url="redis://cache:6379/0")  # default 60 > 40


def test_redis_visibility_timeout_must_exceed_hard_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_VISIBILITY_TIMEOUT_S"):
        load_settings(
            data_dir=tmp_path, broker_url="redis://cache:6379/0", visibility_timeout_s=120, generation_hard_limit_s=120,
            requeue_after_s=121,
        )
    load_settings(
        data_dir=tmp_path, broker_url="redis://cache:6379/0", visibility_timeout_s=121, generation_hard_limit_s=120,
        requeue_after_s=121,
    )


def test_visibility_timeout_is_irrelevant_for_the_embedded_broker(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, visibility_timeout_s=10, generation_hard_limit_s=120, requeue_after_s=121)
    assert s.visibility_timeout_s == 10


def test_soft_limit_must_be_below_hard_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_GENERATION_SOFT_LIMIT_S"):
        load_settings(data_dir=tmp_path, generation_soft_limit_s=120, generation_hard_limit_s=120)
    with pytest.raises(ConfigError, match="KEFU_GENERATION_SOFT_LIMIT_S"):
        load_settings(data_dir=tmp_path, generation_soft_limit_s=200, generation_hard_limit_s=120)


def test_a_crashed_workers_messages_are_answered_about_a_minute_later_by_default(tmp_path: Path) -> None:
    """Recovery after kill -9 was about 11 minutes with a 3,600 s visibility timeout and a 600 s requeue age."""
    s = load_settings(data_dir=tmp_path, broker_url="redis://cache:6379/0")  # the defaults pass check_reliability
    assert s.visibility_timeout_s <= 60  # Redis hands a dead worker's task back
    assert s.requeue_after_s + s.sweep_interval_s <= 90  # and the sweeper publishes it again
    assert s.generation_soft_limit_s < s.generation_hard_limit_s < min(s.visibility_timeout_s, s.requeue_after_s)


def test_requeue_after_must_exceed_hard_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_REQUEUE_AFTER_S"):
        load_settings(data_dir=tmp_path, requeue_after_s=120, generation_hard_limit_s=120)
    load_settings(data_dir=tmp_path, requeue_after_s=121, generation_hard_limit_s=120)


def test_model_repo_needs_model_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_MODEL_FILE"):
        load_settings(data_dir=tmp_path, model_repo="Qwen/Qwen3-4B-GGUF")
    load_settings(data_dir=tmp_path, model_repo="Qwen/Qwen3-4B-GGUF", model_file="Qwen3-4B-Q4_K_M.gguf")
    load_settings(data_dir=tmp_path, model_repo="Qwen/Qwen3-4B-GGUF", model_path=tmp_path / "m.gguf")


def test_config_error_is_a_value_error_and_wraps_validation(tmp_path: Path) -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match=r"^KEFU_PORT: Input should be a valid integer"):
        load_settings(data_dir=tmp_path, port="not-a-port")


def test_environment_is_read_with_the_kefu_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEFU_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("KEFU_BROKER_URL", "redis://cache:6379/5")
    monkeypatch.setenv("KEFU_CONTEXT_TURNS", "3")
    s = Settings()
    assert s.data_dir == tmp_path / "d"
    assert s.effective_redis_url == "redis://cache:6379/5"
    assert s.context_turns == 3


def test_masked_hides_secret_and_url_passwords(tmp_path: Path) -> None:
    s = Settings(
        data_dir=tmp_path,
        secret_key="top-secret-value",
        broker_url="redis://:brokerpw@cache:6379/0",
        database_url="postgresql+psycopg://kefu:dbpw@db/kefu",
    )
    m = s.masked()
    assert m["secret_key"] == "********"
    assert m["broker_url"] == "redis://:****@cache:6379/0"
    assert m["database_url"] == "postgresql+psycopg://kefu:****@db/kefu"
    assert m["effective_database_url"] == "postgresql+psycopg://kefu:****@db/kefu"
    assert m["effective_broker_url"] == "redis://:****@cache:6379/0"
    assert m["effective_redis_url"] == "redis://:****@cache:6379/0"
    assert m["data_dir"] == str(tmp_path)
    dumped = repr(m)
    for secret in ("top-secret-value", "brokerpw", "dbpw"):
        assert secret not in dumped


def test_masked_without_secrets(tmp_path: Path) -> None:
    m = Settings(data_dir=tmp_path).masked()
    assert m["secret_key"] is None
    assert m["effective_redis_url"] is None
    assert m["effective_database_url"].startswith("sqlite:///")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:pw@host:5432/db", "postgresql://user:****@host:5432/db"),
        ("redis://:pw@host:6379/0", "redis://:****@host:6379/0"),
        ("postgresql://user:p@ss@host/db", "postgresql://user:****@host/db"),  # '@' inside the password
        ("redis://user@host/0", "redis://user@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:////var/kefu.sqlite", "sqlite:////var/kefu.sqlite"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_allowed_origins_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_ALLOWED_ORIGINS", " https://a.example, https://b.example:8443 ,,")
    assert Settings().allowed_origins == ["https://a.example", "https://b.example:8443"]


def test_allowed_origins_single_value_and_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_ALLOWED_ORIGINS", "https://only.example")
    assert Settings().allowed_origins == ["https://only.example"]
    monkeypatch.setenv("KEFU_ALLOWED_ORIGINS", '["https://a.example", "https://b.example"]')
    assert Settings().allowed_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("KEFU_ALLOWED_ORIGINS", "")
    assert Settings().allowed_origins == []


def test_allowed_origins_from_dotenv(clean_env: Path) -> None:
    (clean_env / ".env").write_text("KEFU_ALLOWED_ORIGINS=https://a.example,https://b.example\n")
    assert Settings().allowed_origins == ["https://a.example", "https://b.example"]


def test_allowed_origins_default_and_list_kwarg() -> None:
    assert Settings().allowed_origins == []
    assert Settings(allowed_origins=["https://x.example"]).allowed_origins == ["https://x.example"]


def test_signing_key_is_generated_once_with_private_permissions(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    s = Settings(data_dir=data_dir)
    key = s.signing_key()
    assert len(key) >= 32
    assert sorted(p.name for p in data_dir.iterdir()) == ["secret.key"]  # no temp file left behind
    assert stat.S_IMODE((data_dir / "secret.key").stat().st_mode) == 0o600
    assert s.signing_key() == key
    assert Settings(data_dir=data_dir).signing_key() == key


def test_signing_keys_differ_between_data_dirs(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path / "a").signing_key() != Settings(data_dir=tmp_path / "b").signing_key()


def test_configured_secret_key_wins(tmp_path: Path) -> None:
    Settings(data_dir=tmp_path).signing_key()  # a generated key file exists
    s = Settings(data_dir=tmp_path, secret_key="configured")
    assert s.signing_key() == b"configured"


def test_secret_key_from_env_is_not_written_to_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEFU_SECRET_KEY", "from-env")
    s = Settings(data_dir=tmp_path / "d")
    assert s.signing_key() == b"from-env"
    assert not (tmp_path / "d").exists()


def test_shared_database_without_a_secret_key_is_refused(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://kefu@db/kefu")
    with pytest.raises(ConfigError, match="KEFU_SECRET_KEY"):
        s.signing_key()
    assert not (tmp_path / "secret.key").exists()


def _wecom(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "corpid": "ww1", "agentid": 1000002, "secret": "s", "token": "t",
            "aes_key": "A" * 43, **extra}


def test_platform_accounts_from_json_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEFU_WECOM_APPS", json.dumps([_wecom("it"), _wecom("hr")]))
    monkeypatch.setenv("KEFU_WECOM_KF_ACCOUNTS", json.dumps([_wecom("kf", servicer_userid="zhangsan")]))
    settings = load_settings(data_dir=tmp_path)
    registry.check(settings)
    app = wecom.app(settings, "hr")
    assert app is not None and app.agentid == 1000002 and wecom.app(settings, "nobody") is None
    kf = wecom_kf.account(settings, "kf")
    assert kf is not None and kf.servicer_userid == "zhangsan" and kf.handoff_on_fallback
    assert settings.masked()["wecom_apps"][0]["secret"] == "********"


@pytest.mark.parametrize(("apps", "message"), [
    ([_wecom("it"), _wecom("it")], "its own name"),
    ([_wecom("it/../x")], "part of the URL"),
    ([_wecom("it", aes_key="short")], "43-character EncodingAESKey"),
])
def test_platform_accounts_are_checked_at_start(tmp_path: Path, apps: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.check(load_settings(data_dir=tmp_path, wecom_apps=apps))


def test_request_urls_with_access_tokens_stay_out_of_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import httpx

    from workers.cli import setup_logging

    setup_logging("INFO")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errcode": 0})

    with caplog.at_level(logging.INFO), httpx.Client(transport=httpx.MockTransport(answer)) as http:
        http.get("https://api.weixin.qq.com/cgi-bin/media/get?access_token=SECRET-TOKEN&media_id=m1")
    assert "SECRET-TOKEN" not in caplog.text


def test_a_local_asr_model_directory_without_tokens_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEFU_LOCAL_ASR_MODEL_DIR=.*no tokens\.txt"):
        load_settings(data_dir=tmp_path, local_asr_model_dir=tmp_path / "not-unpacked")
    (tmp_path / "tokens.txt").write_text("<blk> 0\n")
    load_settings(data_dir=tmp_path, local_asr_model_dir=tmp_path)


def test_a_channel_configured_in_dot_env_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from channels import wechat_mp

    monkeypatch.chdir(tmp_path)
    account = {"name": "shop", "appid": "wx1", "secret": "s", "token": "t"}
    (tmp_path / ".env").write_text(f"KEFU_WECHAT_ACCOUNTS={json.dumps([account])}\nKEFU_MAX_TOKENS=7\n")
    settings = load_settings(data_dir=tmp_path)
    registry.check(settings)
    found = wechat_mp.account(settings, "shop")
    assert settings.max_tokens == 7 and found is not None and found.appid == "wx1"


def test_a_section_variable_that_is_not_json_names_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEFU_WECOM_APPS", "[{")
    with pytest.raises(ConfigError, match=r"^KEFU_WECOM_APPS is not valid JSON"):
        registry.check(load_settings(data_dir=tmp_path))


def test_a_copy_keeps_in_process_section_values_and_reads_sections_afresh(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, wecom_apps=[_wecom("it")])
    assert wecom.app(settings, "it") is not None
    copy = settings.model_copy(update={"wecom_apps": [_wecom("hr")], "max_tokens": 3})
    assert copy.max_tokens == 3 and wecom.app(copy, "hr") is not None and wecom.app(copy, "it") is None
    assert wecom.app(settings, "it") is not None  # the original is untouched


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("KEFU_MAX_TOKENS", "-5", "KEFU_MAX_TOKENS: Input should be greater than 0 (got '-5')"),
    ("KEFU_N_CTX", "-1", "KEFU_N_CTX: Input should be greater than 0"),
    ("KEFU_SWEEP_INTERVAL_S", "0", "KEFU_SWEEP_INTERVAL_S: Input should be greater than 0"),
    ("KEFU_PORT", "-1", "KEFU_PORT: Input should be greater than or equal to 1"),
    ("KEFU_DATABASE_URL", "localhost/kefu", "KEFU_DATABASE_URL: must be a URL with a scheme"),
    ("KEFU_LOG_LEVEL", "loud", "KEFU_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("KEFU_ALLOWED_ORIGINS", "[", "KEFU_ALLOWED_ORIGINS"),
])
def test_bad_values_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str,
                                                    value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(data_dir=tmp_path)
    assert str(refused.value).startswith(message)


def test_a_lower_case_log_level_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEFU_LOG_LEVEL", "info")
    assert load_settings(data_dir=tmp_path).log_level == "INFO"


def test_a_secret_is_never_echoed_in_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        registry.check(load_settings(data_dir=tmp_path, wecom_apps=[_wecom("it", aes_key="my-secret-aes-value")]))
    assert "my-secret-aes-value" not in str(refused.value)


# --- KEFU_<NAME>_FILE: a setting read from a file (Docker/Kubernetes secrets) --------------------------------------


def test_a_secret_setting_is_read_from_its_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "key").write_text("from-a-file\n")
    (clean_env / "url").write_text("postgresql+psycopg://kefu_app:pw@postgres:5432/kefu\r\n")
    (clean_env / "faq").write_text(json.dumps([{"keywords": ["营业"], "answer": "9点到18点"}]))
    monkeypatch.setenv("KEFU_SECRET_KEY_FILE", str(clean_env / "key"))
    monkeypatch.setenv("KEFU_DATABASE_URL_FILE", str(clean_env / "url"))
    monkeypatch.setenv("KEFU_FAQ_FILE", str(clean_env / "faq"))
    s = load_settings(data_dir=clean_env)
    assert s.signing_key() == b"from-a-file"  # the trailing newline is not part of the key
    assert s.database_url == "postgresql+psycopg://kefu_app:pw@postgres:5432/kefu"
    assert s.faq[0].answer == "9点到18点"
    assert "pw" not in json.dumps(s.masked(), ensure_ascii=False)


def test_a_channel_section_is_read_from_a_file_named_in_dot_env(clean_env: Path) -> None:
    (clean_env / "apps.json").write_text(json.dumps([_wecom("it")]) + "\n")
    (clean_env / ".env").write_text("KEFU_WECOM_APPS_FILE=apps.json\n")
    settings = load_settings(data_dir=clean_env)
    registry.check(settings)
    app = wecom.app(settings, "it")
    assert app is not None and app.secret.get_secret_value() == "s"


@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_a_setting_and_its_file_together_are_refused_naming_both(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  where: str) -> None:
    (clean_env / "key").write_text("from-a-file")
    monkeypatch.setenv("KEFU_SECRET_KEY_FILE", str(clean_env / "key"))
    if where == "environment":
        monkeypatch.setenv("KEFU_SECRET_KEY", "plain")
    else:
        (clean_env / ".env").write_text("KEFU_SECRET_KEY=plain\n")
    with pytest.raises(ConfigError, match=r"^KEFU_SECRET_KEY and KEFU_SECRET_KEY_FILE are both set") as refused:
        load_settings(data_dir=clean_env)
    assert "from-a-file" not in str(refused.value) and "plain" not in str(refused.value)


def test_a_section_setting_and_its_file_together_are_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "apps.json").write_text("[]")
    monkeypatch.setenv("KEFU_WECOM_APPS_FILE", str(clean_env / "apps.json"))
    monkeypatch.setenv("KEFU_WECOM_APPS", "[]")
    with pytest.raises(ConfigError, match=r"^KEFU_WECOM_APPS and KEFU_WECOM_APPS_FILE are both set"):
        registry.check(load_settings(data_dir=clean_env))


def test_an_empty_variable_beside_its_file_counts_as_unset(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "key").write_text("from-a-file")
    monkeypatch.setenv("KEFU_SECRET_KEY_FILE", str(clean_env / "key"))
    monkeypatch.setenv("KEFU_SECRET_KEY", "")
    assert load_settings(data_dir=clean_env).signing_key() == b"from-a-file"


@pytest.mark.parametrize("kind", ["missing", "directory", "not-utf8"])
def test_an_unreadable_file_is_refused_naming_the_variable_and_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     kind: str) -> None:
    path = clean_env / "secret"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfesecret-bytes")
    monkeypatch.setenv("KEFU_NLS_ACCESS_KEY_SECRET_FILE", str(path))
    with pytest.raises(ConfigError, match=rf"^KEFU_NLS_ACCESS_KEY_SECRET_FILE={path}: ") as refused:
        load_settings(data_dir=clean_env)
    assert "secret-bytes" not in str(refused.value)


def test_a_bad_value_from_a_file_is_never_echoed(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "port").write_text("hunter2-is-not-a-port\n")
    (clean_env / "apps.json").write_text('[{"secret": "hunter3"')
    monkeypatch.setenv("KEFU_PORT_FILE", str(clean_env / "port"))
    with pytest.raises(ConfigError, match=r"^KEFU_PORT: ") as refused:
        load_settings(data_dir=clean_env)
    assert "hunter2" not in str(refused.value)
    monkeypatch.delenv("KEFU_PORT_FILE")
    monkeypatch.setenv("KEFU_WECOM_APPS_FILE", str(clean_env / "apps.json"))
    with pytest.raises(ConfigError, match=r"^KEFU_WECOM_APPS_FILE's file is not valid JSON") as refused:
        registry.check(load_settings(data_dir=clean_env))
    assert "hunter3" not in str(refused.value)
