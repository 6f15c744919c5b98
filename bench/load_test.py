"""Load test: Locust's simulated users (web chat on the WebSocket + the OpenAI API) against a whole Kefu stack.

The 1,000-user run (about 9 minutes: 40 s of ramps and 6 min 45 s of holds, ~1 min to start, warm up and stop;
run it on a quiet machine)::

    .venv/bin/python -m bench.load_test --gateways 2 --slots 4 --threads 1 \
        --stages 100:60,250:75,500:90,1000:180 --out /tmp/kefu-load

``--threads 1``: on the 2-core VM the LLM worker shares the cores with two gateways, the io worker, PostgreSQL,
Redis and Locust; llama.cpp's default (a thread per core) then waits on its own busy threads (smoke, 60 users:
reply p95 17-18 s and 0.76 cores with 2 threads, 0.4-0.5 s and 0.27 cores with 1; docs/BENCHMARKS.md). Leave it
out to measure the product's default.

Smoke (about 3 minutes, at most 100 users): ``.venv/bin/python -m bench.load_test --threads 1 --stages
50:45,100:60``.

What it starts: PostgreSQL and Redis (``tests/services.py``: a fresh database, Redis database ``--redis-db``),
``kefu gateway --workers K`` (``--gateways``), one LLM worker (``--queues llm``, ``KEFU_N_SLOTS`` = ``--slots``,
the tiny random-weight Qwen3 of ``tests/synthetic_gguf.py``, ``KEFU_MAX_TOKENS`` = ``--max-tokens``) and one io
worker (``--queues io``). It adds an API key (``kefu apikey add load-test``), asks ``GET /v1/models`` for a model
name, then runs ``locust --headless`` on ``bench/locustfile.py`` (:class:`WebChatUser` : :class:`OpenAIUser` =
3 : 1; ``--web-only`` when the API is not there) with ``--csv`` into ``--out``, and stops everything.

Admission control (``docs/admission.md``) is switched off for the run: ``KEFU_RATE_LIMIT_IP``,
``KEFU_RATE_LIMIT_VISITOR``, ``KEFU_RATE_LIMIT_PEER``, ``KEFU_RATE_LIMIT_API_KEY`` = "" and
``KEFU_BACKPRESSURE_WAIT_S`` = 0 in the Kefu processes' environment. Every simulated user comes from 127.0.0.1,
which the per-IP limit would refuse, and backpressure would answer the overflow at once with its polite refusal,
which would flatter the reply times: the run measures what the stack can answer (``--backpressure-wait-s S``
turns backpressure alone back on, to see what customers get past saturation). ``--keep-limits`` leaves the
defaults on; a refusal that remains is an error (HTTP 429, a ``rate_limited`` error frame).

Prints, per stage (its steady part: all its users running) and per kind (``web``, ``openai-stream``, ``openai``):
p50/p95/p99 of accept and of full reply, replies per second, errors, the share of requests answered within
2 s (failures count as not within) and how many web replies were not the model's (``fallback``: the model
failed or missed its deadline; ``rule``: e.g. a refusal by admission control with ``--keep-limits``); then the
CPU each process group used per stage, in cores and in milliseconds per reply (psutil: gateway processes, LLM
worker, io worker, Locust, PostgreSQL's and Redis's server processes, this script, the whole machine), and the
production-shape sum for ``--target-users`` (docs/BENCHMARKS.md). One JSON object with everything goes to
``--out``/summary.json. PostgreSQL and Redis are the machine's shared servers: their CPU includes whatever else
uses them during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.sync.client import connect

from bench.load_stages import Stage, parse_stages, stage_at, total_s
from bench.phone_common import git_commit, machine
from bench.stats import pct
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services
from tests.stack import GatewayProcess, kefu_env
from tests.synthetic_gguf import write_qwen3_gguf
from workers.demo.processes import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 2.0  # the seed target: 95 % of requests within 2 s
LIMITS_OFF = {"KEFU_RATE_LIMIT_IP": "", "KEFU_RATE_LIMIT_VISITOR": "", "KEFU_RATE_LIMIT_PEER": "",
              "KEFU_RATE_LIMIT_API_KEY": "", "KEFU_BACKPRESSURE_WAIT_S": "0"}


# ---- the stack ---------------------------------------------------------------------------------------

@dataclass
class Stack:
    gateway: GatewayProcess
    llm: WorkerProcess
    io: WorkerProcess
    env: dict[str, str]
    data_dir: Path


@contextmanager
def kefu_stack(args: argparse.Namespace, workdir: Path) -> Iterator[Stack]:
    """PostgreSQL + Redis, K gateway processes, an LLM worker and an io worker; all stopped on exit."""
    services.ensure_postgres()
    services.ensure_redis()
    db_name, db_url = services.create_database()
    data_dir = workdir / "data"
    values: dict[str, Any] = {
        "data_dir": str(data_dir), "model_path": str(write_qwen3_gguf(workdir / "tiny-qwen3.gguf")),
        "max_tokens": args.max_tokens, "n_ctx": 1024, "n_slots": args.slots, "n_threads": args.threads,
        "temperature": 0.0,
        "secret_key": "load-test", "log_level": "INFO", "database_url": db_url,
        "broker_url": services.redis_db_url(args.redis_db),
    }
    upgrade(Settings(**values))
    env = kefu_env(values)
    if not args.keep_limits:
        env.update(LIMITS_OFF)
    if args.backpressure_wait_s is not None:  # the rate limits off, the model's backlog refused past this wait
        env["KEFU_BACKPRESSURE_WAIT_S"] = str(args.backpressure_wait_s)
    llm = WorkerProcess(env, workdir / "llm-worker.log", queues="llm")
    io = WorkerProcess(env, workdir / "io-worker.log", queues="io", warm=False)
    gateway = GatewayProcess(env, workdir / "gateway.log", workers=args.gateways)
    try:
        gateway.start(timeout=60)
        for name, worker in (("llm", llm), ("io", io)):
            if not worker.wait(180):
                raise SystemExit(f"the {name} worker did not start:\n{worker.log_path.read_text()[-2000:]}")
        yield Stack(gateway, llm, io, env, data_dir)
    finally:
        gateway.stop()
        llm.stop()
        io.stop()
        services.drop_database(db_name)


def api_key(stack: Stack) -> str | None:
    """A new API key (``kefu apikey add``), None when this Kefu has no API channel yet."""
    done = subprocess.run([sys.executable, "-m", "workers.cli", "apikey", "add", "load-test"], env=stack.env,
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        print(f"no API key ({done.stderr.strip()[-300:] or 'no output'}): web chat only", file=sys.stderr)
        return None
    return lines[-1].strip()


def model_name(stack: Stack, key: str) -> str | None:
    answer = httpx.get(f"{stack.gateway.http_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if answer.status_code != 200 or not answer.json().get("data"):
        print(f"GET /v1/models answered {answer.status_code}: web chat only", file=sys.stderr)
        return None
    return str(answer.json()["data"][0]["id"])


def warm_up(stack: Stack, key: str | None, model: str | None) -> None:
    """One unmeasured question through each path: the first task after start-up pays for the worker's first
    generation and the gateways' first connections (seconds), which would land in the first stage's tail."""
    base = stack.gateway.http_url
    session = httpx.post(f"{base}/v1/web/sessions", timeout=30).json()
    with connect(f"{stack.gateway.ws_url}/v1/web/ws?token={session['token']}", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "message", "text": "你好，什么时候发货？", "client_msg_id": "warm-up"}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if frame.get("type") == "reply" and frame.get("message_id") is not None:
                ws.send(json.dumps({"type": "ack", "reply_id": frame["reply_id"]}))
                break
    if key and model:
        httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": model, "messages": [{"role": "user", "content": "你好"}]}).raise_for_status()


# ---- CPU -----------------------------------------------------------------------------------------------

class CpuSampler:
    """Every ``every`` s, the CPU seconds each process group has used since the sampler started (psutil; a
    process first seen later counts from its birth), and the whole machine's busy CPU seconds."""

    def __init__(self, groups: dict[str, list[int]], by_name: dict[str, str], every: float = 2.0) -> None:
        self.groups, self.by_name, self.every = groups, by_name, every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[int, float] = {}
        self._total: dict[str, float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample(baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()

    def add(self, group: str, pid: int) -> None:
        self.groups.setdefault(group, []).append(pid)

    def _members(self) -> dict[str, list[psutil.Process]]:
        """Each group's processes: its roots and their descendants; a process in several trees (this script is
        every process's parent) counts in the group whose own root it is, else in the first that holds it."""
        found: dict[str, list[psutil.Process]] = defaultdict(list)
        groups = list(self.groups.items())  # the sampler thread reads while add() may run
        roots = {pid for _, pids in groups for pid in pids}
        claimed: set[int] = set()
        for group, pids in groups:
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    tree = [root, *(p for p in root.children(recursive=True) if p.pid not in roots)]
                except psutil.Error:
                    continue
                found[group] += [p for p in tree if p.pid not in claimed]
                claimed.update(p.pid for p in tree)
        for proc in psutil.process_iter(["name"]):
            named = self.by_name.get(proc.info["name"] or "")
            if named:
                found[named].append(proc)
        return found

    def _sample(self, baseline: bool = False) -> None:
        for group, procs in self._members().items():
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                used = times.user + times.system
                self._total[group] += 0.0 if baseline else used - self._last.get(proc.pid, 0.0)
                self._last[proc.pid] = used
        cpu = psutil.cpu_times()
        busy = sum(getattr(cpu, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        self.samples.append((time.time(), {**self._total, "machine": busy}))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def cores(self, start_wall: float, end_wall: float) -> dict[str, float]:
        """Cores each group used on average between two wall-clock moments (the nearest samples)."""
        inside = [s for s in self.samples if start_wall - self.every <= s[0] <= end_wall + self.every]
        if len(inside) < 2:
            return {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        return {group: round((last.get(group, 0.0) - first.get(group, 0.0)) / (t1 - t0), 3) for group in last}


# ---- Locust --------------------------------------------------------------------------------------------

def run_locust(args: argparse.Namespace, stack: Stack, key: str | None, model: str | None, out: Path,
               sampler: CpuSampler) -> Path:
    samples = out / "samples.jsonl"
    argv = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
            "--host", stack.gateway.http_url, "--csv", str(out / "locust"), "--only-summary",
            "--loglevel", "WARNING", "--kefu-stages", args.stages, "--kefu-spawn-rate", str(args.spawn_rate),
            "--kefu-think", args.think, "--kefu-samples", str(samples)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    if key and model:
        argv += ["--kefu-model", model, "WebChatUser", "OpenAIUser"]
        env["LOADTEST_API_KEY"] = key
    else:
        argv += ["WebChatUser"]
    # past saturation Locust's own stop (users blocked in 60 s reads, a starved process) can take minutes
    budget = total_s(parse_stages(args.stages, args.spawn_rate)) + 300
    with (out / "locust.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        sampler.add("locust", proc.pid)
        try:
            proc.wait(budget)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(30)
    if not samples.exists():
        raise SystemExit(f"Locust wrote no samples:\n{(out / 'locust.log').read_text()[-3000:]}")
    return samples


# ---- figures -------------------------------------------------------------------------------------------

Row = dict[str, Any]


def read_samples(path: Path) -> tuple[float, list[Row]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return float(json.loads(lines[0])["t0_wall"]), [json.loads(line) for line in lines[1:]]


def figures(rows: list[Row], seconds: float) -> dict[str, Any]:
    """p50/p95/p99 (ms) of the successful ones, failures, share within 2 s (of all), per second."""
    good = [r["ms"] / 1000 for r in rows if r["ok"]]
    fast = sum(1 for r in rows if r["ok"] and r["ms"] <= TARGET_S * 1000)
    sources: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("source"):
            sources[r["source"]] += 1
    return {"n": len(rows), "errors": len(rows) - len(good), **({"sources": dict(sources)} if sources else {}),
            **{f"p{p}_ms": round(pct(good, p)) if good else None for p in (50, 95, 99)},
            "within_2s": round(fast / len(rows), 3) if rows else None,
            "per_s": round(len(good) / seconds, 1) if seconds > 0 else None}


def by_stage(stages: list[Stage], rows: list[Row]) -> list[dict[str, Any]]:
    """Each stage's steady part (all its users running): figures per kind and measurement."""
    out = []
    for stage in stages:
        steady = [r for r in rows if (s := stage_at(stages, r["t"])) is not None and s.index == stage.index
                  and r["t"] >= stage.steady_s]
        seconds = stage.end_s - stage.steady_s
        kinds: dict[str, Any] = {}
        for kind in sorted({r["kind"] for r in steady}):
            kinds[kind] = {name: figures([r for r in steady if r["kind"] == kind and r["name"] == name], seconds)
                           for name in ("session", "connect", "accept", "reply")
                           if any(r["kind"] == kind and r["name"] == name for r in steady)}
        out.append({"stage": stage.index, "users": stage.users, "steady_s": round(seconds), "kinds": kinds})
    return out


def fmt(f: dict[str, Any] | None) -> str:
    if not f:
        return "—"
    share = f"{f['within_2s'] * 100:.1f} %" if f["within_2s"] is not None else "—"
    sources = f.get("sources", {})
    other = sum(n for source, n in sources.items() if source != "model")  # fallback, rule…: not the model's answer
    tail = f", {other} not from the model {dict(sorted(sources.items()))}" if other else ""
    return f"{f['p50_ms']} / {f['p95_ms']} / {f['p99_ms']} ({share}, {f['errors']} err{tail})"


def table(result: dict[str, Any]) -> str:
    lines = ["| users | kind | accept p50/p95/p99 ms (≤2 s, errors) | reply p50/p95/p99 ms (≤2 s, errors) "
             "| replies/s |", "|---|---|---|---|---|"]
    for stage in result["stages"]:
        for kind, names in stage["kinds"].items():
            reply = names.get("reply")
            lines.append(f"| {stage['users']} | {kind} | {fmt(names.get('accept'))} | {fmt(reply)} "
                         f"| {reply['per_s'] if reply else '—'} |")
    lines += ["", "CPU in cores:", "", "| users | " + " | ".join(result["cpu_groups"]) + " |",
              "|---|" + "---|" * len(result["cpu_groups"])]
    for stage in result["stages"]:
        cpu = stage.get("cpu_cores", {})
        lines.append(f"| {stage['users']} | " + " | ".join(str(cpu.get(g, "—")) for g in result["cpu_groups"]) + " |")
    lines += ["", "CPU ms per reply:", "", "| users | " + " | ".join(result["cpu_groups"]) + " |",
              "|---|" + "---|" * len(result["cpu_groups"])]
    for stage in result["stages"]:
        per = stage.get("cpu_ms_per_reply", {})
        lines.append(f"| {stage['users']} | " + " | ".join(str(per.get(g, "—")) for g in result["cpu_groups"]) + " |")
    return "\n".join(lines)


def first_miss(result: dict[str, Any]) -> int | None:
    """Users of the first stage where a kind's replies were not 95 % within 2 s (or had errors over 1 %)."""
    for stage in result["stages"]:
        for names in stage["kinds"].values():
            reply = names.get("reply")
            if reply and reply["n"] and (reply["within_2s"] < 0.95 or reply["errors"] > 0.01 * reply["n"]):
                return int(stage["users"])
    return None


def cpu_per_reply(stage: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds each process group spent per reply in a stage's steady part."""
    replies = sum(names["reply"]["per_s"] or 0 for names in stage["kinds"].values() if "reply" in names)
    cpu = stage.get("cpu_cores", {})
    return {group: round(cores / replies * 1000, 1) for group, cores in cpu.items() if replies} if replies else {}


def production_shape(result: dict[str, Any], users: int, think_mean_s: float) -> dict[str, Any] | None:
    """What ``users`` would need, from the last stage that met the target (else the first stage): the rate
    they ask at (users / (mean think time + that stage's reply p50)) × each group's CPU per reply = cores."""
    stages = result["stages"]
    met = [s for s in stages if s["users"] < (result["first_stage_missing_target"] or 10**9)]
    base = met[-1] if met else (stages[0] if stages else None)
    if base is None or not base.get("cpu_ms_per_reply"):
        return None
    p50s = [names["reply"]["p50_ms"] for names in base["kinds"].values() if names.get("reply", {}).get("p50_ms")]
    reply_s = (sum(p50s) / len(p50s) / 1000) if p50s else 0.0
    rate = users / (think_mean_s + reply_s)
    cores = {g: round(ms / 1000 * rate, 2) for g, ms in base["cpu_ms_per_reply"].items()
             if g not in ("machine", "load_test", "locust")}
    return {"users": users, "from_stage_users": base["users"], "replies_per_s": round(rate, 1),
            "cores": cores, "cores_total": round(sum(cores.values()), 1)}


# ---- the run ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes (kefu gateway --workers)")
    parser.add_argument("--slots", type=int, default=4, help="KEFU_N_SLOTS of the LLM worker")
    parser.add_argument("--threads", type=int, help="KEFU_N_THREADS of the LLM worker (default: every core)")
    parser.add_argument("--max-tokens", type=int, default=16, help="KEFU_MAX_TOKENS: answer length in tokens")
    parser.add_argument("--stages", default="100:60,250:75,500:90,1000:180", help="USERS:HOLD_S,… ramped in turn")
    parser.add_argument("--spawn-rate", type=float, default=25.0, help="users started per second")
    parser.add_argument("--think", default="5,15", help="MIN,MAX seconds a user waits between questions")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database for the broker and bus (flushed)")
    parser.add_argument("--keep-limits", action="store_true", help="leave admission control's defaults on")
    parser.add_argument("--backpressure-wait-s", type=float, metavar="S",
                        help="keep only backpressure on: new model work is refused while the workers' estimated wait "
                        "is over S seconds (web: the stored polite reply, source rule; API: 429, an error here)")
    parser.add_argument("--web-only", action="store_true", help="no OpenAI-API users")
    parser.add_argument("--target-users", type=int, default=1000, help="users the production-shape sum is for")
    parser.add_argument("--out", type=Path, help="folder for Locust's CSV, the samples, logs, summary.json")
    args = parser.parse_args()
    stages = parse_stages(args.stages, args.spawn_rate)
    with tempfile.TemporaryDirectory(prefix="kefu-load-") as tmp:
        out = args.out or Path(tempfile.mkdtemp(prefix="kefu-load-out-"))
        out.mkdir(parents=True, exist_ok=True)
        with kefu_stack(args, Path(tmp)) as stack:
            key = None if args.web_only else api_key(stack)
            model = model_name(stack, key) if key else None
            warm_up(stack, key, model)
            groups = {"gateway": [stack.gateway.proc.pid], "llm worker": [stack.llm.proc.pid],
                      "io worker": [stack.io.proc.pid], "load_test": [os.getpid()]}
            names = {"postgres": "postgres", "redis-server": "redis"}
            with CpuSampler(groups, names) as sampler:
                samples = run_locust(args, stack, key, model, out, sampler)
            for name in ("gateway.log", "llm-worker.log", "io-worker.log"):
                if (Path(tmp) / name).exists():
                    (out / name).write_bytes((Path(tmp) / name).read_bytes())
        t0, rows = read_samples(samples)
        result: dict[str, Any] = {
            "bench": "load_test", "machine": machine(), "commit": git_commit(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "api": bool(key and model), "stages": by_stage(stages, rows),
            "all": {kind: {name: figures([r for r in rows if r["kind"] == kind and r["name"] == name],
                                         total_s(stages))
                           for name in ("session", "connect", "accept", "reply")
                           if any(r["kind"] == kind and r["name"] == name for r in rows)}
                    for kind in sorted({r["kind"] for r in rows})},
            "cpu_groups": ["gateway", "llm worker", "io worker", "postgres", "redis", "locust", "load_test",
                           "machine"],
        }
        for stage, entry in zip(stages, result["stages"], strict=True):
            entry["cpu_cores"] = sampler.cores(t0 + stage.steady_s, t0 + stage.end_s)
            entry["cpu_ms_per_reply"] = cpu_per_reply(entry)
        result["first_stage_missing_target"] = first_miss(result)
        low, high = (float(x) for x in args.think.split(","))
        result["production_shape"] = production_shape(result, args.target_users, (low + high) / 2)
        (out / "summary.json").write_text(json.dumps(result, ensure_ascii=False, indent=1))
        print(json.dumps(result, ensure_ascii=False))
        print(f"\nmachine: {result['machine']}, commit {result['commit']}, out: {out}")
        print(table(result))
        miss = result["first_stage_missing_target"]
        print(f"\nfirst stage where a kind's replies were not 95 % within 2 s (or >1 % errors): "
              f"{f'{miss} users' if miss is not None else 'none (every stage met it)'}")
        shape = result["production_shape"]
        if shape:
            print(f"{shape['users']} users at this think time ask ~{shape['replies_per_s']} questions/s; at the CPU "
                  f"per reply of the {shape['from_stage_users']}-user stage that takes {shape['cores_total']} "
                  f"cores: {shape['cores']}")


if __name__ == "__main__":
    main()
