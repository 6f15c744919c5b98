"""A failed statement's error never carries its parameters: they are customers' messages (ID-card and phone numbers)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from models.infra.db import make_engine
from models.settings import Settings

SECRET_TEXT = "我的身份证号是110101199003077777，手机13800138000"


def test_a_database_error_does_not_show_the_statement_parameters(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(DBAPIError) as failed, engine.begin() as conn:
            conn.execute(text("INSERT INTO no_such_table (text) VALUES (:text)"), {"text": SECRET_TEXT})
        logging.getLogger("kefu.test").error("request failed: %s", failed.value)
    finally:
        engine.dispose()
    assert "110101199003077777" not in str(failed.value) and "hidden" in str(failed.value)
    assert "110101199003077777" not in caplog.text
