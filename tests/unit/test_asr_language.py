"""The start-up check (channels/telephony/asr_language.py): a hotline greeting in Chinese needs a recognizer
that understands Chinese, and `kefu gateway` refuses to start without one."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from channels.telephony import asr_language
from models.settings import ConfigError, Settings
from tests.conftest import REPO
from tests.sherpa_model import build_paraformer, write_tokens

GATEWAY = [{"name": "pbx", "secret": "s"}]
CHINESE = [{"number": "4008001234", "greeting": "您好，这里是优选商城。", "transfer_to": "8001"}]
ENGLISH = [{"number": "4008001234", "greeting": "Hello, this is the Youxuan shop.", "transfer_to": "8001"}]
KEYS_ONLY = [{"number": "4008001234", "greeting": "您好。",
              "menu": {"prompt": "查询订单请按1。", "keys": {"1": {"action": "ask", "text": "我要查询订单"}},
                       "keys_only": True}}]


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


def test_a_chinese_hotline_with_pocketsphinx_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, hotlines=CHINESE))
    said = str(refused.value)
    assert "hotline 4008001234" in said and "pocketsphinx" in said
    for fix in ("kefu speech pull paraformer-zh-small", "KEFU_LOCAL_ASR_MODEL_DIR=", "KEFU_SPEECH_PROVIDER=nls",
                "KEFU_NLS_APPKEY", '"keys_only": true', "KEFU_PHONE_ASR_LANGUAGE_CHECK=warn"):
        assert fix in said


def test_the_default_greeting_counts_when_no_hotline_is_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_PHONE_GREETING greets callers in Chinese"):
        asr_language.check(settings(tmp_path, voice_gateways=GATEWAY))  # the default greeting is Chinese
    asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, phone_greeting="Hello, how can I help?"))


def test_a_hotline_without_its_own_greeting_is_greeted_with_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hotline 4008001234"):
        asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, hotlines=[{"number": "4008001234"}]))


@pytest.mark.parametrize("values", [
    {"voice_gateways": GATEWAY, "hotlines": ENGLISH},  # an English line, English recognizer
    {"voice_gateways": GATEWAY, "hotlines": KEYS_ONLY},  # keys only: no speech is recognized
    {"voice_gateways": GATEWAY, "hotlines": CHINESE, "speech_provider": "nls", "nls_access_key_id": "id",
     "nls_access_key_secret": "secret", "nls_appkey": "app"},
    {},  # the phone is not used: no gateway, no hotline, no AudioSocket
])
def test_nothing_to_refuse(tmp_path: Path, values: dict[str, Any]) -> None:
    asr_language.check(settings(tmp_path, **values))


def test_a_sherpa_model_passes_when_its_symbols_are_chinese_and_not_otherwise(tmp_path: Path) -> None:
    chinese, english = tmp_path / "zh", tmp_path / "en"
    for model_dir, symbols in ((chinese, None), (english, ["<blank>", "<s>", "</s>", "▁HELLO", "▁WORLD", "<unk>"])):
        model_dir.mkdir()
        build_paraformer(model_dir)
        write_tokens(model_dir, *([symbols] if symbols else []))
    asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, hotlines=CHINESE, local_asr_model_dir=chinese))
    with pytest.raises(ConfigError, match=r"has no Chinese character in its tokens\.txt"):
        asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, hotlines=CHINESE, local_asr_model_dir=english))


def test_warn_starts_anyway_with_an_error_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="channels.telephony.asr_language"):
        asr_language.check(settings(tmp_path, voice_gateways=GATEWAY, hotlines=CHINESE,
                                    phone_asr_language_check="warn"))
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "KEFU_PHONE_ASR_LANGUAGE_CHECK=warn" in line.getMessage() and "pocketsphinx" in line.getMessage()


def test_an_audiosocket_port_open_to_this_host_only_is_logged_not_refused(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # the compose file sets KEFU_AUDIOSOCKET_PORT for every gateway: one without phones must still start
    with caplog.at_level(logging.ERROR, logger="channels.telephony.asr_language"):
        asr_language.check(settings(tmp_path, audiosocket_port=9092))
    assert any("if calls arrive there" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError):  # opened to a PBX on another host: the phone is in use
        asr_language.check(settings(tmp_path, audiosocket_port=9092, audiosocket_allowed_ips=["192.0.2.10"]))


def test_kefu_gateway_refuses_to_start(clean_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env |= {"KEFU_DATA_DIR": str(clean_env / "var"), "KEFU_VOICE_GATEWAYS": json.dumps(GATEWAY),
            "KEFU_HOTLINES": json.dumps(CHINESE, ensure_ascii=False)}
    # an address no socket binds: were the gateway not refused, uvicorn would fail to listen (exit 1), not serve
    done = subprocess.run([sys.executable, "-m", "workers.cli", "gateway", "--host", "192.0.2.1"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "configuration error" in done.stderr and "kefu speech pull" in done.stderr


def test_kefu_demo_calls_an_english_line_when_only_pocketsphinx_listens(tmp_path: Path) -> None:
    from channels.telephony.config import PhoneSettings
    from workers.demo.run import DEMO_ENGLISH_GREETING, _demo_settings

    demo, _ = _demo_settings(settings(tmp_path, hotlines=CHINESE), embedded=True)
    asr_language.check(demo)  # its gateway starts
    phone = demo.section(PhoneSettings)
    assert phone.voice_gateways and phone.hotlines == [] and phone.phone_greeting == DEMO_ENGLISH_GREETING


def test_kefu_status_shows_it_without_failing_on_it(tmp_path: Path) -> None:
    from workers.status_command import Status, check_phone_speech, render

    status = Status()
    check_phone_speech(settings(tmp_path, voice_gateways=GATEWAY, hotlines=CHINESE), status)
    assert "pocketsphinx" in status.checks["phone_speech"] and "phone_speech" not in status.missing
    assert "WARN  phone_speech hotline 4008001234 greets callers in Chinese" in render(status)
    check_phone_speech(settings(tmp_path, voice_gateways=GATEWAY, hotlines=ENGLISH), status)
    assert "ok    phone_speech ok" in render(status)
