"""``kefu model status|promote|rollback|resume|compare``: the gray release of a second model from the command line.

- ``status [--json]``: the primary model, the canary (``KEFU_CANARY_BACKEND``: where it runs, never its key), its
  state (active, rolled back, promoted: by whom, why, when), its share, and both arms' answers and errors in the
  current window (workers.gray_release), with the thresholds that take the canary out.
- ``promote`` / ``rollback`` / ``resume`` ``[--by NAME] [--reason TEXT]``: every conversation to the canary, none,
  or back to its share with an empty window. Audited ``model_promoted`` / ``model_rolled_back`` / ``model_resumed``
  with ``by`` (default ``cli:<login name>``) and the reason; every worker follows at its next answer. Asking for the
  state it is already in changes nothing.
- ``compare [--days N] [--json]``: each model's answers, latency p50/p95, fallback rate, hand-off rate and CSAT over
  the last N days, side by side, from the database (models.model_report).

Exit status: 0 done; 1 nothing to act on (no canary configured); 2 the database or the KV store cannot be used.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any, TextIO

import redis
from sqlalchemy.exc import SQLAlchemyError

from models import model_report
from models.infra.db import make_engine, make_session_factory
from models.infra.kv import make_kv
from models.settings import Settings
from workers import gray_release
from workers.gray_release import ACTIVE, CANARY, PRIMARY, PROMOTED, ROLLED_BACK, GrayRelease

TARGET = {"promote": PROMOTED, "rollback": ROLLED_BACK, "resume": ACTIVE}


def default_by() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


def primary_name(settings: Settings) -> str:
    """The primary model's name as the workers report it (nothing is loaded or called)."""
    from workers.llm.backends import build_engine, primary_backend

    try:
        engine = build_engine(settings, primary_backend(settings))
    except Exception as exc:  # no usable model configured: say so, the rest of the status still helps
        return f"(unavailable: {exc})"
    name = engine.model_name
    engine.close()
    return name


def status(settings: Settings, gray: GrayRelease | None, primary: str, as_json: bool, out: TextIO) -> int:
    if gray is None:
        if as_json:
            print(json.dumps({"primary": primary, "canary": None}, ensure_ascii=False), file=out)
        else:
            print(f"primary: {primary}\ncanary:  none (KEFU_CANARY_BACKEND is unset; docs/gray-release.md)", file=out)
        return 0
    phase = gray.phase()
    windows = {arm: gray.window(arm, phase.epoch) for arm in (PRIMARY, CANARY)}
    primary_share, canary_share = phase.shares(settings.canary_share)
    found: dict[str, Any] = {
        "primary": primary, "canary": {"model": gray.canary.name, "id": gray.canary.id,
                                       "backend": gray.canary.backend.describe()},
        "state": phase.state, "by": phase.by, "reason": phase.reason, "at": phase.at, "epoch": phase.epoch,
        "share": {"configured": settings.canary_share, PRIMARY: primary_share, CANARY: canary_share},
        "window": {"seconds": settings.canary_window_s, "min_requests": settings.canary_min_requests,
                   "max_error_rate": settings.canary_max_error_rate,
                   **{arm: {"answers": w.answers, "errors": w.errors, "error_rate": round(w.rate, 4)}
                      for arm, w in windows.items()}}}
    if as_json:
        print(json.dumps(found, ensure_ascii=False), file=out)
        return 0
    changed = f" by {phase.by} at {phase.at}" + (f" ({phase.reason})" if phase.reason else "") if phase.by else ""
    print(f"primary: {primary}\ncanary:  {gray.canary.name} ({gray.canary.backend.describe()}), id {gray.canary.id}\n"
          f"state:   {phase.state}{changed}\n"
          f"share:   canary {canary_share:.1%} of conversations (configured {settings.canary_share:.1%})\n"
          f"window:  the last {settings.canary_window_s} s; the canary is taken out above "
          f"{settings.canary_max_error_rate:.1%} errors with at least {settings.canary_min_requests} answers", file=out)
    for arm, w in windows.items():
        print(f"  {arm:<8} answers {w.answers:>6}  errors {w.errors:>6}  error rate {w.rate:.1%}", file=out)
    return 0


def change(gray: GrayRelease | None, action: str, by: str, reason: str, out: TextIO, err: TextIO) -> int:
    if gray is None:
        print("kefu: no canary to act on: KEFU_CANARY_BACKEND is unset", file=err)
        return 1
    target, now = TARGET[action], gray.phase()
    if now.state == target:
        print(f"the canary {gray.canary.name} is {target} already; nothing changed", file=out)
        return 0
    done = gray.change(target, by=by, reason=reason)
    print(f"the canary {gray.canary.name}: {now.state} -> {done.state} (by {by}); workers follow at their next answer",
          file=out)
    return 0


def _pct(value: float) -> str:
    return f"{value:.1%}"


def compare(settings: Settings, days: int, as_json: bool, out: TextIO) -> int:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            since, lines = model_report.compare(session, days)
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps({"since": since.isoformat(), "days": days, "models": [line.json() for line in lines]},
                         ensure_ascii=False), file=out)
        return 0
    print(f"models since {since:%Y-%m-%d %H:%M} UTC ({days} days)", file=out)
    print(f"{'model':<32} {'answers':>8} {'fallback':>9} {'p50 ms':>7} {'p95 ms':>7} {'handoff':>8} {'csat (n)':>11}",
          file=out)
    for line in lines:
        csat = "-" if line.csat_mean is None else f"{line.csat_mean:.2f} ({line.csat_count})"
        print(f"{line.model[:32]:<32} {line.answers:>8} {_pct(line.fallback_rate):>9} "
              f"{'-' if line.latency_p50_ms is None else line.latency_p50_ms:>7} "
              f"{'-' if line.latency_p95_ms is None else line.latency_p95_ms:>7} {_pct(line.handoff_rate):>8} "
              f"{csat:>11}", file=out)
    if not lines:
        print("(no model answers in the period)", file=out)
    return 0


def run(settings: Settings, action: str, *, as_json: bool = False, by: str | None = None, reason: str = "",
        days: int = 7, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """One ``kefu model`` action; the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    if not 1 <= days <= model_report.MAX_DAYS:
        print(f"kefu: --days must be 1..{model_report.MAX_DAYS}", file=err)
        return 2
    try:
        if action == "compare":
            return compare(settings, days, as_json, out)
        engine = make_engine(settings)
        try:
            gray = gray_release.make(settings, make_kv(settings), make_session_factory(engine), primary="")
            if action == "status":
                return status(settings, gray, primary_name(settings), as_json, out)
            return change(gray, action, by or default_by(), reason, out, err)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        print(f"kefu: the database cannot be used ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); has "
              "`kefu migrate` been run?", file=err)
        return 2
    except (OSError, redis.RedisError) as exc:
        print(f"kefu: the KV store (KEFU_REDIS_URL or the embedded file) cannot be used ({type(exc).__name__}: {exc})",
              file=err)
        return 2
