"""Synthesis throughput against a local chat-completions server with a fixed latency, and the CPU cost of our checks.

    python benchmarks/synthesize.py [--latency 0.2 --concurrency 1 8 64 --requests-per-slot 8]

The scripted server (qzhou_jax/synthesis/fake_server.py) runs in its own process, answers every request after
`--latency` seconds with outputs that pass the checks, so each item costs exactly one request. For each concurrency C
the full run path (`qzhou_jax.synthesis.run.run`: openai client, semaphore, journal append + fsync, checks, output
assembly) generates paraphrases for C x requests-per-slot items; requests/s is printed next to the ideal
C / latency. Then the journaled answers are re-checked alone (JSON parse + every constraint of generators.accept),
timed with process CPU time: CPU per accepted sample spent in our own checks. The client's and the server's process
CPU per request show which side limits a run on a busy machine. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from qzhou_jax.synthesis import decontam, generators  # noqa: E402
from qzhou_jax.synthesis.client import parse_json_object  # noqa: E402
from qzhou_jax.synthesis.run import SynthesisConfig, read_items, run  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be or has had "
         "not but first new two one their after been also its who time when city year river people part").split()


def write_input(path: Path, n: int) -> None:
    """Synthetic English (query, positive) pairs: a 10-word question and a 3-sentence, 60-word passage."""
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(9)) + f" q{i}"
            sentences = [" ".join(WORDS[(i * 5 + s * 11 + k) % len(WORDS)] for k in range(19)) + f" p{i}s{s}."
                         for s in range(3)]
            f.write(json.dumps({"query": q, "pos": [" ".join(sentences)], "neg": []}) + "\n")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "qzhou_jax.synthesis.fake_server", "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    return proc, proc.stdout.readline().strip()


def process_cpu_s(pid: int) -> float:
    """utime + stime of another process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_cpu(cfg: SynthesisConfig, journal_path: str, repeats: int) -> tuple[float, int]:
    """CPU seconds per accepted sample to parse and check the journaled answers (no I/O, no network)."""
    items = read_items(cfg.input)[0]
    answers = {}
    for line in Path(journal_path).read_text().splitlines():
        record = json.loads(line)
        answers.setdefault(record["item"], record["text"])
    gen = generators.get(cfg.generator)
    accepted = 0
    start = time.process_time()
    for _ in range(repeats):
        for item in items:
            outcome = generators.Outcome([], [])
            gen.accept(item, parse_json_object(answers[item.index]), outcome, cfg.n, 1)
            accepted += len(outcome.accepted)
    return (time.process_time() - start) / max(accepted, 1), accepted // repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests-per-slot", type=int, default=8)
    parser.add_argument("--n", type=int, default=2, help="paraphrases per item (one request asks for all)")
    parser.add_argument("--check-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    proc, base_url = start_server(args.latency)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for c in args.concurrency:
                items = c * args.requests_per_slot
                write_input(Path(tmp) / f"in{c}.jsonl", items)
                cfg = SynthesisConfig(generator="paraphrase", input=str(Path(tmp) / f"in{c}.jsonl"),
                                      output=str(Path(tmp) / f"out{c}.jsonl"), n=args.n, model="fake",
                                      base_url=base_url, concurrency=c, progress_every=3600,
                                      decontaminate_tasks="none")
                start, cpu0, server0 = time.perf_counter(), time.process_time(), process_cpu_s(proc.pid)
                summary = run(cfg, decontam.Decontaminator())
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
                server_cpu = process_cpu_s(proc.pid) - server0
                assert summary["complete"] and summary["accepted"] == items * args.n, summary
                check_s, _ = check_cpu(cfg, f"{cfg.output}.journal.jsonl", args.check_repeats)
                ideal = c / args.latency
                results.append(dict(concurrency=c, requests=summary["requests"], wall_s=round(wall, 3),
                                    req_per_s=round(items / wall, 2), ideal_req_per_s=round(ideal, 2),
                                    share_of_ideal=round(items / wall / ideal, 3),
                                    max_in_flight=summary["max_in_flight"],
                                    transport_retries=summary["transport_retries"],
                                    process_cpu_ms_per_request=round(1e3 * cpu / items, 3),
                                    server_cpu_ms_per_request=round(1e3 * server_cpu / items, 3),
                                    check_cpu_us_per_accepted=round(1e6 * check_s, 1)))
    finally:
        proc.kill()
        proc.wait()
    print(f"latency {args.latency * 1e3:.0f} ms, paraphrase n={args.n}, one request per item")
    print(f"{'C':>4} {'requests':>9} {'req/s':>8} {'ideal':>8} {'share':>6} {'in flight':>9} "
          f"{'client CPU ms/req':>18} {'server CPU ms/req':>18} {'check CPU us/sample':>20}")
    for r in results:
        print(f"{r['concurrency']:>4} {r['requests']:>9} {r['req_per_s']:>8.2f} {r['ideal_req_per_s']:>8.2f} "
              f"{r['share_of_ideal']:>6.2f} {r['max_in_flight']:>9} {r['process_cpu_ms_per_request']:>18.3f} "
              f"{r['server_cpu_ms_per_request']:>18.3f} "
              f"{r['check_cpu_us_per_accepted']:>20.1f}")
    out = {"benchmark": "synthesize", "latency_s": args.latency, "n": args.n, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
