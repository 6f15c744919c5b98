"""Where personal data is masked (docs/privacy.md): the policy on top of :mod:`models.pii`.

- :func:`install_log_masking`: every log record of the process (any logger, any handler, uvicorn's and
  Celery's included) has its message, arguments and exception text masked when it is created.
  Idempotent; called wherever Kefu sets up logging (``workers.cli``, the gateway app).
- :func:`stored_text`: what to store of a customer's text: PII masked per ``KEFU_PII_MASK_STORED`` and
  the moderation list's ``mask`` words starred; also says which moderation rules masked something.

Audit details are masked in :func:`models.audit.record` itself. Nothing here raises for any text.
"""

from __future__ import annotations

import logging
from typing import Any

from models import moderation, pii
from models.settings import Settings

SENSITIVE = frozenset({pii.Kind.ID_CARD, pii.Kind.BANK_CARD})
_STORED_KINDS = {"none": frozenset(), "sensitive": SENSITIVE, "all": pii.ALL_KINDS}


def stored_kinds(settings: Settings) -> frozenset[pii.Kind]:
    return _STORED_KINDS[settings.pii_mask_stored]


def stored_text(settings: Settings, text: str) -> tuple[str, tuple[str, ...]]:
    """(the text to store, the moderation rules that masked words in it)."""
    kinds = stored_kinds(settings)
    masked = pii.mask(text, kinds) if kinds else text
    found = moderation.moderator(settings)
    if found is None or found.keywords is None:
        return masked, ()
    outcome = found.keywords.check(masked)
    return outcome.text, outcome.masked_rules


# ---- logs ---------------------------------------------------------------------------------------------

_MARK = "_kefu_pii_masked"


def _masked_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with personal data masked; left exactly as it was when there is none (formatters that
    read ``args``, such as uvicorn's access log, keep working)."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging itself reports it later; mask what we can
        message = str(record.msg)
    masked = pii.mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if (masked := pii.mask(text)) != text:
            record.exc_text = masked
    elif record.exc_text:
        record.exc_text = pii.mask(record.exc_text)
    if record.stack_info:
        record.stack_info = pii.mask(record.stack_info)
    return record


def install_log_masking() -> None:
    """Mask personal data in every log record this process creates from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, _MARK, False):
        return

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _masked_record(factory(*args, **kwargs))

    setattr(masking_factory, _MARK, True)
    logging.setLogRecordFactory(masking_factory)
