"""``kefu``: the command line, and the one place where gateway and workers are composed.

    kefu --version               the installed version
    kefu config                  effective settings, secrets masked, and the chosen backends
    kefu config --reference      every KEFU_* setting as a Markdown table (docs/settings.md)
    kefu status [--json]         database, migrations, broker, queue depths, LLM workers; exit 1 if one is missing
    kefu migrate [REVISION]      upgrade the database (default: head)
    kefu downgrade REVISION      downgrade the database; past the first revision (base) only with --drop-audit-log
    kefu audit verify            recompute the audit log's hash chains; exit 1 and where, if anything was tampered with
    kefu kb import PATH…         load knowledge-base files (Markdown, text, HTML, PDF, DOCX, CSV/XLSX FAQ sheets)
    kefu kb list [--all]|show ID|delete ID   the knowledge base's documents (--all: approved answers too)
    kefu eval DATASET [--faq FILE|--kb] [--json] [--errors]   FAQ, intent and hand-off figures on a labelled set
    kefu answers approve REPLY_ID [--question TEXT] | list | revoke REPLY_ID   approved answers (answered again)
    kefu user add|list|disable|passwd   console accounts (docs/console.md)
    kefu model status|promote|rollback|resume|compare   the gray release of a canary model (docs/gray-release.md)
    kefu speech list | pull NAME [--url URL] [--dir DIR]   Mandarin recognition models for the phone (sherpa-onnx)
    kefu gateway                 serve the HTTP/WebSocket gateway
    kefu worker --queues llm,io  run a Celery worker for the given queues
    kefu up                      migrate, then a worker and the gateway together (chat page on /)
    kefu demo                    send real questions through the whole pipeline and print what happened
    kefu fake PLATFORM           run a platform's fake locally (wechat, nls, pbx, webhook), to try a channel
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Literal

from models.settings import ConfigError, Settings, load_settings

log = logging.getLogger("kefu")


def setup_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """One handler on the root logger: KEFU_LOG_FORMAT text or json (one object a line, with request_id and
    conversation_id when known: models.infra.logs); uvicorn's loggers write through it too (log_config=None)."""
    from models.infra import logs
    from models.privacy import install_log_masking

    install_log_masking()  # before anything logs: no ID, card or mobile number in any log line (docs/privacy.md)
    logs.configure(level, log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin chatter is not for operators
    # httpx logs every request's URL at INFO: WeChat's carry access_token and media_id in the query string
    logging.getLogger("httpx").setLevel(logging.WARNING)


def settings_reference() -> str:
    """docs/settings.md: every KEFU_* setting of Settings and of each channel's section."""
    from channels import registry
    from models.settings_reference import render

    return render([(found.name, found.section) for found in registry.channels() if found.section is not None])


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from channels import registry

    if getattr(args, "reference", False):
        sys.stdout.write(settings_reference())
        return 0
    registry.check(settings)  # reads every channel's section, so they are shown (and checked) too
    print(json.dumps(settings.masked(), indent=2, ensure_ascii=False, default=str))
    for line in settings.backend_choice():
        print("#", line)
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from workers import status_command

    return status_command.run(settings, args.json)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from models.infra.migrate import upgrade

    upgrade(settings, args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def cmd_downgrade(settings: Settings, args: argparse.Namespace) -> int:
    from models.infra.migrate import AuditLossRefused, downgrade

    try:
        dropped = downgrade(settings, args.revision, drop_audit_log=args.drop_audit_log)
    except AuditLossRefused as exc:
        print(f"kefu: refused: {exc}", file=sys.stderr)
        return 2
    if dropped is not None:
        print(f"warning: the append-only audit log ({dropped} rows) was dropped with the schema", file=sys.stderr)
    print(f"database downgraded to {args.revision}")
    return 0


def cmd_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from workers.audit_command import run_verify

    return run_verify(settings, Path(args.anchors) if args.anchors else None)


def cmd_kb(settings: Settings, args: argparse.Namespace) -> int:
    from workers import kb_command

    return kb_command.run(settings, args.kb_command, getattr(args, "paths", ()), getattr(args, "id", None),
                          getattr(args, "all", False))


def cmd_answers(settings: Settings, args: argparse.Namespace) -> int:
    from workers import answers_command

    return answers_command.run(settings, args.answers_command, getattr(args, "reply_id", None),
                               getattr(args, "question", None))


def cmd_apikey(settings: Settings, args: argparse.Namespace) -> int:
    from workers import apikey_command

    return apikey_command.run(settings, args.apikey_command, getattr(args, "name", None))


def add_apikey_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("apikey", help="keys for the OpenAI/Ollama-compatible API (docs/api.md)").add_subparsers(
        dest="apikey_command", required=True)
    keys.add_parser("add", help="make a key; printed once, on stdout's last line").add_argument("name", metavar="NAME")
    keys.add_parser("list", help="every key: name, prefix, dates, state")
    keys.add_parser("revoke", help="refuse a key from now on").add_argument("name", metavar="NAME")
    for command in keys.choices.values():
        command.set_defaults(func=cmd_apikey)


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    from workers import user_command

    return user_command.run(settings, args.user_command, getattr(args, "username", None),
                            getattr(args, "role", None), getattr(args, "display_name", None),
                            getattr(args, "password_stdin", False))


def add_user_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = sub.add_parser("user", help="console accounts (docs/console.md)").add_subparsers(
        dest="user_command", required=True)
    p = users.add_parser("add", help="a new account; the password from a prompt (twice) or --password-stdin")
    p.add_argument("username", metavar="USERNAME")
    p.add_argument("--role", choices=["admin", "agent"], required=True)
    p.add_argument("--display-name", metavar="NAME", help="the name customers and colleagues see (default: USERNAME)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input's first line")
    users.add_parser("list", help="every account, with role, status and last sign of life")
    users.add_parser("disable", help="disable an account and end its sessions").add_argument("username",
                                                                                            metavar="USERNAME")
    p = users.add_parser("passwd", help="set a new password (ends the account's sessions)")
    p.add_argument("username", metavar="USERNAME")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input's first line")
    for command in users.choices.values():
        command.set_defaults(func=cmd_user)


def cmd_model(settings: Settings, args: argparse.Namespace) -> int:
    from workers import model_command

    return model_command.run(settings, args.model_command, as_json=getattr(args, "json", False),
                             by=getattr(args, "by", None), reason=getattr(args, "reason", ""),
                             days=getattr(args, "days", 7))


def add_model_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = sub.add_parser("model", help="the gray release of a canary model (docs/gray-release.md)").add_subparsers(
        dest="model_command", required=True)
    model.add_parser("status", help="primary and canary, the canary's state and share, the window's answers and "
                     "errors").add_argument("--json", action="store_true")
    for name, what in (("promote", "every conversation to the canary"), ("rollback", "every conversation back to "
                       "the primary"), ("resume", "the canary back on its share, with an empty window")):
        p = model.add_parser(name, help=what)
        p.add_argument("--by", help="who decided (audited; default cli:<login name>)")
        p.add_argument("--reason", default="", help="why (audited)")
    p = model.add_parser("compare", help="each model's answers, latency, fallback and hand-off rates, CSAT")
    p.add_argument("--days", type=int, default=7, help="the last N days (1-366; default 7)")
    p.add_argument("--json", action="store_true")
    for command in model.choices.values():
        command.set_defaults(func=cmd_model)


def cmd_speech(settings: Settings, args: argparse.Namespace) -> int:
    from workers import speech_command

    if args.speech_command == "list":
        return speech_command.run_list(settings)
    return speech_command.run_pull(settings, args.name, args.url, args.dir, args.force)


def add_speech_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    speech = sub.add_parser("speech", help="speech-recognition models for Mandarin callers (docs/telephony.md)"
                            ).add_subparsers(dest="speech_command", required=True)
    speech.add_parser("list", help="the catalogue of Mandarin models, and which are installed")
    p = speech.add_parser("pull", help="download a model into KEFU_DATA_DIR/speech/NAME and print the "
                          "KEFU_LOCAL_ASR_MODEL_DIR line to set")
    p.add_argument("name", metavar="NAME", help="a name from `kefu speech list` (any name with --url)")
    p.add_argument("--url", help="the archive (.tar.bz2) from a mirror, or a local file, instead of GitHub")
    p.add_argument("--dir", metavar="DIR", help="install the model as this directory instead")
    p.add_argument("--force", action="store_true", help="replace a model already installed there")
    for command in speech.choices.values():
        command.set_defaults(func=cmd_speech)


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from workers import eval_command

    return eval_command.run(settings, args.dataset, args.faq, args.kb, args.json, args.errors)


def add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="FAQ, intent and hand-off figures on a labelled set (docs/knowledge.md)")
    p.add_argument("dataset", metavar="DATASET", help=".jsonl (text + expected_faq/intent/handoff), a hand-off or "
                   "intent .tsv (tests/data/handoff/), or an FAQ set .json (tests/data/faq/)")
    faq = p.add_mutually_exclusive_group()
    faq.add_argument("--faq", metavar="FILE", help="match against this FAQ (.json, .csv, .xlsx) instead of the "
                     "configured one")
    faq.add_argument("--kb", action="store_true", help="match against KEFU_FAQ and the knowledge base even when "
                     "the set carries its own FAQ")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--errors", action="store_true", help="also list each wrong decision (file:line, expected, got, "
                   "the message)")
    p.set_defaults(func=cmd_eval)


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from models.infra import metrics_dir

    # before the app imports prometheus_client; the --workers processes inherit it and /metrics adds them up
    metrics_dir.prepare(settings, f"gateway-{args.port or settings.port}")
    from channels.app import GRACEFUL_SHUTDOWN_S, create_app

    for line in settings.backend_choice():
        log.info("%s", line)
    workers = getattr(args, "workers", 1) or 1
    if workers > 1:  # each process builds its own app (connections must not cross a fork)
        uvicorn.run("workers.cli:gateway_app", factory=True, workers=workers, host=args.host or settings.host,
                    port=args.port or settings.port, log_level=settings.log_level.lower(),
                    ws_max_size=settings.max_body_bytes, access_log=False, log_config=None,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, forwarded_allow_ips=settings.forwarded_allow_ips)
        return 0
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        ws_max_size=settings.max_body_bytes,
        access_log=False,  # the gateway writes its own (channels/access_log.py: no query strings)
        log_config=None,  # uvicorn's loggers go through setup_logging's handler (KEFU_LOG_FORMAT)
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,  # open console event streams are cancelled after it
        forwarded_allow_ips=settings.forwarded_allow_ips,  # whose X-Forwarded-For is believed; None: uvicorn's
    )
    return 0


def gateway_app() -> object:
    """The gateway app, built in each uvicorn worker process (``kefu gateway --workers N``)."""
    from channels.app import create_app

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from models.infra import metrics_dir

    if settings.worker_metrics_port:  # before anything imports prometheus_client (prefork children inherit it)
        metrics_dir.prepare(settings, f"worker-{settings.worker_metrics_port}")
    else:
        metrics_dir.single_process()
    from workers.celery_app import create_app

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - {"llm", "io"}
    if unknown:
        raise ConfigError(f"unknown queue(s) {sorted(unknown)}: use llm, io or llm,io")
    check_canary(settings, queues)
    pool = args.pool or "threads"
    batched = settings.engine == "batched" and "llm" in queues
    if batched and pool == "prefork":
        raise ConfigError("the batched engine serves every conversation of a worker from one process: use --pool "
                          "threads (the default) for the llm queue, or KEFU_ENGINE=simple with prefork")
    llm_threads = settings.n_slots if batched else 1  # batched: one thread per slot feeds the engine
    concurrency = args.concurrency or (llm_threads if queues == ["llm"] else llm_threads + 3 if "llm" in queues else 4)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file lives there
    node = args.hostname or node_name(queues, beat=args.beat)
    app = create_app(settings, warm=args.warm, llm_node=heartbeat_node(queues, node))
    serve_worker_metrics(settings)
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={settings.log_level}",
        f"--hostname={node}",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.beat:
        argv.append("--beat")
    app.worker_main(argv)
    return 0


def check_canary(settings: Settings, queues: list[str]) -> None:
    """A canary model (KEFU_CANARY_BACKEND) that cannot be used stops an LLM worker at start (ConfigError naming it)."""
    if "llm" in queues:
        from workers.gray_release import canary_of

        canary_of(settings)


def serve_worker_metrics(settings: Settings) -> None:
    """The worker's Prometheus metrics on KEFU_WORKER_METRICS_HOST:KEFU_WORKER_METRICS_PORT (0: not served)."""
    if not settings.worker_metrics_port:
        return
    from models.infra import metrics

    try:
        metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
    except OSError as exc:
        raise ConfigError(f"KEFU_WORKER_METRICS_PORT {settings.worker_metrics_port} on KEFU_WORKER_METRICS_HOST "
                          f"{settings.worker_metrics_host!r}: cannot listen ({exc.strerror or exc}); give each "
                          "worker on a host its own port, or 0 for none") from exc
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)


def heartbeat_node(queues: list[str], node: str) -> str | None:
    """The node name an LLM worker's heartbeat carries (``%h`` expanded as Celery does), None for an io worker."""
    from celery.utils.nodenames import host_format

    return host_format(node) if "llm" in queues else None


def node_name(queues: list[str], *, beat: bool) -> str:
    """The default Celery node name: ``llm@%h``, ``io@%h``, ``sweeper@%h`` (the one with --beat). Distinct per kind,
    so an io worker and the sweeper on one host are not taken for duplicates, and ``inspect ping -d`` finds each."""
    return "sweeper@%h" if beat else f"{'-'.join(queues)}@%h"


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from models.infra.migrate import upgrade

    upgrade(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker", "--queues", "llm,io", "--beat", "--warm"],
        env=os.environ.copy(),
    )
    try:
        print(f"Kefu is up: open http://{args.host or settings.host}:{args.port or settings.port}/ to chat", flush=True)
        return cmd_gateway(settings, args)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(settings, keep=args.keep)


def cmd_fake(settings: Settings, args: argparse.Namespace) -> int:
    from workers import fakes

    run = {"wechat": fakes.run_wechat, "nls": fakes.run_nls, "pbx": fakes.run_pbx,
           "webhook": fakes.run_webhook}[args.platform]
    return run(args)


def add_fake_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kinds = sub.add_parser("fake", help="run a platform's fake locally (WeChat, Aliyun NLS, a PBX, a webhook "
                                        "receiver)").add_subparsers(dest="platform", required=True)
    p = kinds.add_parser("wechat", help="the WeChat / WeCom / kf API with sample accounts")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--push", metavar="URL", help="push each stdin line to this official-account callback")
    p = kinds.add_parser("nls", help="Aliyun NLS: token service (PORT), REST (PORT+1) and real-time (PORT+2) gateways")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: free ports")
    p.add_argument("--access-key-id", default="fake-access-key-id")
    p.add_argument("--access-key-secret", default="fake-access-key-secret")
    p.add_argument("--appkey", default="fake-appkey")
    p.add_argument("--recognized", default="请问你们几点营业？", help="what the fake hears in any speech")
    p.add_argument("--model-rate", type=int, choices=[8000, 16000], default=8000,
                   help="the sample rate of the appkey's recognition model (8000: telephone; calls are 8 kHz)")
    p = kinds.add_parser("pbx", help="call Kefu's voice gateway, say something, hang up")
    p.add_argument("--url", required=True, help="Kefu's gateway, ws://HOST:PORT")
    p.add_argument("--secret", required=True, help="a KEFU_VOICE_GATEWAYS secret")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--say-file", metavar="WAV", help="a 16-bit WAV file to say")
    what.add_argument("--text", default="hello, where is my order?", help="words to say (espeak-ng)")
    p.add_argument("--caller", default="+8613800138000")
    p.add_argument("--callee", default="4008001234", help="the hotline number dialed")
    p.add_argument("--call-id", help="default: a new one for every call")
    p.add_argument("--sample-rate", type=int, choices=[8000, 16000], default=8000)
    p.add_argument("--timeout", type=float, default=60, help="seconds for the whole call")
    p.add_argument("--record", metavar="WAV", help="write both sides of the call to this file")
    p = kinds.add_parser("webhook", help="a receiver that verifies and prints Kefu's signed replies")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--name", help="the endpoint's name in KEFU_WEBHOOKS (default: demo)")
    p.add_argument("--secret", help="signs both directions (default: the sample secret)")
    p.add_argument("--push", metavar="URL", help="post each stdin line to Kefu's gateway at this URL, e.g. "
                                                 "http://127.0.0.1:8000")
    p.add_argument("--user-id", default="fake-user", help="the customer --push plays")
    for kind in kinds.choices.values():
        kind.set_defaults(func=cmd_fake)


def add_kb_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kb = sub.add_parser("kb", help="the knowledge base (docs/knowledge.md)").add_subparsers(dest="kb_command",
                                                                                              required=True)
    p = kb.add_parser("import", help="import or update files; a directory: every supported file under it")
    p.add_argument("paths", nargs="+", metavar="PATH")
    kb.add_parser("list", help="the documents, with versions and counts").add_argument(
        "--all", action="store_true", help="also list the approved answers' documents (apart)")
    for name, what in (("show", "a document's passages and FAQ entries"), ("delete", "remove a document")):
        kb.add_parser(name, help=what).add_argument("id", type=int)
    for command in kb.choices.values():
        command.set_defaults(func=cmd_kb)


def add_answers_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    answers = sub.add_parser("answers", help="approved model answers, given again to matching questions "
                             "(docs/knowledge.md)").add_subparsers(dest="answers_command", required=True)
    p = answers.add_parser("approve", help="approve a model answer for reuse")
    p.add_argument("reply_id", type=int, metavar="REPLY_ID")
    p.add_argument("--question", help="the question to match (default: the customer's stored message)")
    answers.add_parser("list", help="every approved answer")
    answers.add_parser("revoke", help="withdraw an approved answer").add_argument("reply_id", type=int,
                                                                                  metavar="REPLY_ID")
    for command in answers.choices.values():
        command.set_defaults(func=cmd_answers)


def installed_version() -> str:
    """The installed distribution's version (importlib.metadata); 'unknown' when run from a tree not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kefu")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kefu", description="Self-hosted AI customer service.")
    parser.add_argument("--version", action="version", version=f"kefu {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print the effective settings")
    p.add_argument("--reference", action="store_true", help="print every KEFU_* setting (name, type, default, "
                   "description) as Markdown instead: docs/settings.md")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("status", help="what is running: database, migrations, broker, queue depths, LLM workers "
                       "(exit 1 when something required is missing)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("migrate", help="upgrade the database")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("downgrade", help="downgrade the database")
    p.add_argument("revision")
    p.add_argument("--drop-audit-log", action="store_true",
                   help="allow a downgrade that drops the append-only audit log (base, or -N past the first revision)")
    p.set_defaults(func=cmd_downgrade)
    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="recompute every hash chain of the audit log (docs/audit.md)")
    p.add_argument("--anchors", metavar="FILE", help="check the chain ends recorded in FILE, then record the current "
                   "ones there (keep FILE off the database host)")
    p.set_defaults(func=cmd_audit_verify)
    add_kb_parser(sub)
    add_eval_parser(sub)
    add_answers_parser(sub)
    add_user_parser(sub)
    add_model_parser(sub)
    add_apikey_parser(sub)
    add_speech_parser(sub)
    for name, func in (("gateway", cmd_gateway), ("up", cmd_up)):
        p = sub.add_parser(name)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        if name == "gateway":
            p.add_argument("--workers", type=int, default=1, help="gateway processes sharing the port")
        p.set_defaults(func=func)
    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--queues", default="llm,io")
    p.add_argument("--pool", choices=["threads", "prefork", "solo"])
    p.add_argument("--concurrency", type=int)
    p.add_argument("--beat", action="store_true", help="also run the periodic sweeper (one per deployment)")
    p.add_argument("--warm", action="store_true", help="load the model when the worker starts")
    p.add_argument("-n", "--hostname", help="Celery node name (default llm@%%h, io@%%h, sweeper@%%h with --beat); "
                   "give each LLM worker on one host its own, e.g. llm-gpu1@%%h")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("demo", help="run questions through the whole pipeline on embedded defaults")
    p.add_argument("--keep", action="store_true", help="keep the demo's data directory")
    p.set_defaults(func=cmd_demo)
    add_fake_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"kefu: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        code: int = args.func(settings, args)
    except ConfigError as exc:
        print(f"kefu: configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
