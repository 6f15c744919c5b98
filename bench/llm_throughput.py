"""LLM throughput: Kefu's batched engine vs naive llama-cpp-python vs llama.cpp's llama-server.

Model: a Qwen3-0.6B-shaped GGUF with random weights (28 layers, hidden 1024, 16 heads / 8 KV heads,
head dim 128, FFN 3072, vocab 151,936; ``--shape 4b`` for Qwen3-4B), written by
``tests.synthetic_gguf`` and quantized to Q4_K_M with llama.cpp's own quantizer
(``llama_model_quantize`` in the llama-cpp-python library). A token costs the same whatever the
weight values, so the figures hold for the real checkpoint of that shape. Cached under
``var/bench/``.

Workload per concurrency level C: C clients start together; each sends ``--rounds`` requests one
after another. Every request = the same ~300-token system prompt + 30–80 tokens of its own
conversation; every engine generates exactly ``--tokens`` tokens (end of generation ignored), with
Qwen3's non-thinking sampling. Engines, each with C slots, the same threads, the same per-sequence
context, started fresh for every level:

- ``kefu``: :class:`workers.llm.batched.BatchedEngine` (continuous batching, shared prefix KV);
- ``naive``: one ``llama_cpp.Llama``, ``create_chat_completion(stream=True)`` behind a lock — what
  chatbot bridges do;
- ``server``: ``llama-server -np C`` (continuous batching, prompt cache) over HTTP, streaming, fed
  the same prompt token ids as ``kefu``. Build it with ``bench/build_llama_server.sh``.

Reported per engine and level: aggregate generated tokens/s (all tokens / wall time) and time to
first token p50/p95 (submit → first token, queueing included).

Usage: python -m bench.llm_throughput [--engines kefu,naive,server] [--concurrency 1,4,8,16]
       [--tokens 64] [--rounds 2] [--threads N] [--shape 0.6b|4b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.stats import pct
from models.envelope import Turn
from models.settings import Settings
from tests.synthetic_gguf import QWEN3_0_6B, QWEN3_4B, QWEN3_REAL_VOCAB_SIZE, write_qwen3_gguf
from workers.demo.processes import free_port
from workers.llm.batched import BatchedEngine, Sampling
from workers.llm.engine import stop_token_ids
from workers.llm.model_files import ModelSpec
from workers.llm.prompts import chatml_tokens

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "var" / "bench"
DEFAULT_SERVER = REPO / "var" / "llama.cpp" / "build" / "bin" / "llama-server"
N_CTX = 1024  # per conversation: 300 + 80 prompt + 64 out fits with room
SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
Q4_K_M = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M

SYSTEM_SENTENCES = [
    "你是“优选商城”的在线客服助手，负责解答订单、物流、退换货、发票和会员相关的问题。",
    "回答要简洁、礼貌、准确，先直接回答问题，再给出必要的下一步。",
    "不知道的事情如实说明，不要编造订单状态、价格或政策。",
    "退货政策：签收后七天内可无理由退货，商品需保持完好，运费由买家承担，质量问题除外。",
    "换货政策：签收后十五天内，商品存在质量问题可以申请换货，平台承担往返运费。",
    "发票：订单完成后可在订单详情页申请电子发票，二十四小时内发送到预留邮箱。",
    "物流：默认使用顺丰和京东物流，偏远地区可能延迟一到三天，可在订单详情页查看物流轨迹。",
    "会员：年度会员享受免运费和专属折扣，会员权益以会员中心页面的说明为准。",
    "营业时间：人工客服每天九点到二十一点在线，其他时间由智能助手接待。",
    "需要人工处理时，告诉客户可以回复“转人工”。",
]
QUESTIONS = [
    "你好，我上周买的蓝牙耳机到现在还没有发货，订单号是20261115008，能帮我查一下吗？",
    "我收到的衣服尺码不对，想换一件大一号的，需要怎么操作？运费谁出？",
    "请问电子发票在哪里申请？我需要开公司抬头的增值税普通发票。",
    "我是年度会员，为什么这次下单还收了运费？",
    "快递显示已签收，但是我没有收到包裹，怎么办？",
    "你们晚上几点还有人工客服？我想咨询一下大件家电的安装问题。",
    "商品页面写的是七天无理由退货，我拆封了还能退吗？",
    "能不能帮我把收货地址改一下，订单还没发货。",
]


@dataclass
class Result:
    engine: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    ttft_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def row(self) -> dict[str, Any]:
        return {"engine": self.engine, "concurrency": self.concurrency, "requests": self.requests,
                "tokens": self.tokens, "wall_s": round(self.wall_s, 2), "tok_per_s": round(self.tokens_per_s, 1),
                "ttft_p50_ms": round(pct(self.ttft_s, 50)), "ttft_p95_ms": round(pct(self.ttft_s, 95)),
                "errors": len(self.errors)}


# ---- the model ------------------------------------------------------------------------------------

def bench_model(shape_name: str) -> Path:
    shape = {"0.6b": QWEN3_0_6B, "4b": QWEN3_4B}[shape_name]
    target = CACHE / f"qwen3-{shape_name}-shaped-random-q4_k_m.gguf"
    if target.exists():
        return target
    import llama_cpp

    CACHE.mkdir(parents=True, exist_ok=True)
    f16 = CACHE / f"qwen3-{shape_name}-shaped-random-f16.gguf"
    started = time.monotonic()
    write_qwen3_gguf(f16, shape, vocab_size=QWEN3_REAL_VOCAB_SIZE, name=f"qwen3-{shape_name}-shaped-random")
    print(f"wrote {f16.name} ({f16.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f}s", flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = Q4_K_M
    params.nthread = len(os.sched_getaffinity(0))
    partial = target.with_suffix(".partial")
    started = time.monotonic()
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params) != 0:
        raise SystemExit("llama_model_quantize failed")
    partial.rename(target)
    f16.unlink()
    print(f"quantized to Q4_K_M: {target.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - started:.0f}s",
          flush=True)
    return target


def settings_for(model: Path, slots: int, threads: int) -> Settings:
    return Settings(data_dir=CACHE / "runtime", model_path=model, n_ctx=N_CTX, n_batch=512, n_threads=threads,
                    n_slots=slots, max_tokens=64, enable_thinking=False, presence_penalty=0.0, seed=1234,
                    temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"], top_k=int(SAMPLING["top_k"]),
                    min_p=SAMPLING["min_p"])


def workload(tokenize: Callable[[str, bool], list[int]], clients: int, rounds: int) -> tuple[str, list[list[str]]]:
    """The ~300-token system prompt and each client's questions (30–80 tokens each)."""
    system = ""
    for sentence in SYSTEM_SENTENCES * 10:
        if len(tokenize(system + sentence, False)) > 300:
            for char in sentence:  # top up to just under 300 tokens
                if len(tokenize(system + char, False)) > 300:
                    break
                system += char
            break
        system += sentence
    rng = random.Random(42)
    plan = []
    for _ in range(clients):
        questions = []
        for _ in range(rounds):
            text = rng.choice(QUESTIONS)
            while len(tokenize(text, False)) < 30:
                text += rng.choice(QUESTIONS)
            ids = tokenize(text, False)[:80]
            questions.append(text if len(ids) < 80 else text[: len(text) * 80 // len(tokenize(text, False))])
        plan.append(questions)
    return system, plan


# ---- the engines ------------------------------------------------------------------------------------

def run_clients(plan: list[list[str]], one: Callable[[str], tuple[int, float]]) -> tuple[int, float, list[float],
                                                                                             list[str]]:
    """Start every client together; each runs its questions in turn. (tokens, wall, ttfts, errors)."""
    barrier = threading.Barrier(len(plan) + 1)
    lock = threading.Lock()
    tokens, ttfts, errors = [0], [], []

    def client(questions: list[str]) -> None:
        barrier.wait()
        for question in questions:
            try:
                produced, ttft = one(question)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                tokens[0] += produced
                ttfts.append(ttft)

    threads = [threading.Thread(target=client, args=(q,)) for q in plan]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    return tokens[0], time.monotonic() - started, ttfts, errors


def bench_kefu(model: Path, clients: int, rounds: int, threads: int, out_tokens: int) -> Result:
    settings = settings_for(model, clients, threads)
    engine = BatchedEngine(ModelSpec(model, model.name, "path"), settings)
    engine.load()
    system, plan = workload(engine._tokenize, clients, rounds)
    sampling = Sampling(SAMPLING["temperature"], SAMPLING["top_p"], int(SAMPLING["top_k"]), SAMPLING["min_p"], 0.0, 1234)
    engine.generate([Turn("system", system), Turn("user", "预热")])  # the first request pays the shared prefix

    def one(question: str) -> tuple[int, float]:
        tokens = engine.prompt_tokens([Turn("system", system), Turn("user", question)])
        request = engine.submit(tokens, max_new=out_tokens, ignore_eos=True, sampling=sampling)
        generation = request.wait(900)
        assert generation.first_token_s is not None
        return generation.completion_tokens, generation.first_token_s

    for key in ("steps", "decode_s", "sample_s"):
        engine.stats[key] = 0
    try:
        tokens, wall, ttfts, errors = run_clients(plan, one)
        print(f"  kefu engine: {json.dumps({k: round(v, 2) for k, v in engine.stats.items()})}", flush=True)
    finally:
        engine.close()
    return Result("kefu", clients, clients * rounds, tokens, wall, ttfts, errors)


def bench_naive(model: Path, clients: int, rounds: int, threads: int, out_tokens: int) -> Result:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=N_CTX, n_batch=512, n_threads=threads, n_gpu_layers=-1, verbose=False,
                seed=1234)
    lock = threading.Lock()

    def tokenize(text: str, special: bool) -> list[int]:
        return list(llm.tokenize(text.encode(), add_bos=False, special=special))

    system, plan = workload(tokenize, clients, rounds)
    no_stop = {t: -1e9 for t in stop_token_ids(tokenize, llm.token_eos())}  # exactly out_tokens, like the others

    def chat(question: str) -> tuple[int, float]:
        submitted = time.monotonic()
        first: float | None = None
        produced = 0
        with lock:  # llama-cpp-python's Llama is one sequence at a time
            stream = llm.create_chat_completion(
                messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                max_tokens=out_tokens, stream=True, logit_bias=no_stop, stop=[], seed=1234,
                temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"], top_k=int(SAMPLING["top_k"]),
                min_p=SAMPLING["min_p"])
            for chunk in stream:
                delta = chunk["choices"][0]["delta"]  # type: ignore[index]
                if delta.get("content") is not None:  # type: ignore[union-attr]
                    produced += 1
                    if first is None:
                        first = time.monotonic() - submitted
        return produced, first or 0.0

    chat("预热")
    try:
        tokens, wall, ttfts, errors = run_clients(plan, chat)
    finally:
        llm.close()
    return Result("naive", clients, clients * rounds, tokens, wall, ttfts, errors)


def bench_server(model: Path, clients: int, rounds: int, threads: int, out_tokens: int, binary: Path) -> Result:
    port = free_port()
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(clients),
            "-c", str(N_CTX * clients), "-b", "512", "-ub", "512", "-t", str(threads), "-tb", str(threads),
            "--no-webui", "--cont-batching", "--kv-unified"]
    log_path = CACHE / f"llama-server-np{clients}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=900, trust_env=False) as http:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"llama-server exited; see {log_path}")
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server did not become ready")
                time.sleep(0.2)

            def tokenize(text: str, special: bool) -> list[int]:
                answer = http.post("/tokenize", json={"content": text, "add_special": False, "parse_special": special})
                return list(answer.json()["tokens"])

            system, plan = workload(tokenize, clients, rounds)

            def prompt(question: str) -> list[int]:  # the same ids Kefu's ChatML builder produces
                return chatml_tokens(tokenize, [Turn("system", system), Turn("user", question)], architecture="qwen3",
                                     enable_thinking=False)

            def complete(question: str) -> tuple[int, float]:
                body = {"prompt": prompt(question), "n_predict": out_tokens, "ignore_eos": True, "stream": True,
                        "cache_prompt": True, "seed": 1234, **SAMPLING}
                submitted = time.monotonic()
                first: float | None = None
                produced = 0
                with httpx.Client(base_url=base, timeout=900, trust_env=False) as own, \
                        own.stream("POST", "/completion", json=body) as response:
                    for line in response.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        if event.get("stop"):
                            produced = int(event.get("tokens_predicted", produced))
                            break
                        produced += 1
                        if first is None:
                            first = time.monotonic() - submitted
                return produced, first or 0.0

            complete("预热")
            tokens, wall, ttfts, errors = run_clients(plan, complete)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return Result("server", clients, clients * rounds, tokens, wall, ttfts, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="kefu,naive,server")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every level this many times (engines interleaved) and report the median run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shape", choices=["0.6b", "4b"], default="0.6b")
    parser.add_argument("--server-bin", type=Path, default=Path(os.environ.get("LLAMA_SERVER", DEFAULT_SERVER)))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=["kefu", "naive", "server"], help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:  # one engine at one level, in a process of its own; the last line is the result
        level = int(args.concurrency)
        model = bench_model(args.shape)
        if args.one == "kefu":
            result = bench_kefu(model, level, args.rounds, args.threads, args.tokens)
        elif args.one == "naive":
            result = bench_naive(model, level, args.rounds, args.threads, args.tokens)
        else:
            result = bench_server(model, level, args.rounds, args.threads, args.tokens, args.server_bin)
        for error in result.errors[:3]:
            print(f"  error: {error}", flush=True)
        print(json.dumps(result.row()), flush=True)
        return
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "server" in engines and not args.server_bin.exists() and not shutil.which(str(args.server_bin)):
        raise SystemExit(f"no llama-server at {args.server_bin}: run bench/build_llama_server.sh or pass --server-bin")
    model = bench_model(args.shape)
    print(f"model {model.name} ({model.stat().st_size / 2**20:.0f} MiB); {args.threads} threads; "
          f"{platform.processor() or platform.machine()}; {os.cpu_count()} CPUs", flush=True)
    runs: list[dict[str, Any]] = []
    for level in [int(c) for c in args.concurrency.split(",")]:
        for attempt in range(args.repeat):
            for name in engines:
                # A fresh process per run: engines sharing one process slow each other down (OpenMP
                # thread teams of an earlier engine's threads; measured: kefu 37 tok/s alone, 25 after naive).
                child = subprocess.run(
                    [sys.executable, "-m", "bench.llm_throughput", "--one", name, "--concurrency", str(level),
                     "--rounds", str(args.rounds), "--tokens", str(args.tokens), "--threads", str(args.threads),
                     "--shape", args.shape, "--server-bin", str(args.server_bin)],
                    cwd=REPO, capture_output=True, text=True, check=False)
                lines = [line for line in child.stdout.splitlines() if line.strip()]
                for line in lines[:-1]:
                    if line.startswith("  "):
                        print(line, flush=True)
                if child.returncode != 0 or not lines:
                    raise SystemExit(f"{name} at concurrency {level} failed:\n{child.stdout[-2000:]}{child.stderr[-2000:]}")
                runs.append(json.loads(lines[-1]) | {"run": attempt + 1})
                print(json.dumps(runs[-1]), flush=True)
    summary = []  # per (engine, level): the run with the median throughput
    for level in [int(c) for c in args.concurrency.split(",")]:
        for name in engines:
            mine = sorted((r for r in runs if r["engine"] == name and r["concurrency"] == level),
                          key=lambda r: r["tok_per_s"])
            summary.append(mine[len(mine) // 2] | {"all_tok_per_s": [r["tok_per_s"] for r in mine]})
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": summary}, indent=2))
    print("\n| engine | concurrency | tok/s (median) | all runs | TTFT p50 ms | TTFT p95 ms |\n|---|---|---|---|---|---|")
    for row in summary:
        print(f"| {row['engine']} | {row['concurrency']} | {row['tok_per_s']} | {row['all_tok_per_s']} | "
              f"{row['ttft_p50_ms']} | {row['ttft_p95_ms']} |")


if __name__ == "__main__":
    main()
