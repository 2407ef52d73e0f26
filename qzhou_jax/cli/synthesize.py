"""LLM-API data synthesis (docs/recipe.md section 4): paraphrase, augment, hard negatives; merge, decontaminate, seed.

    python -m qzhou_jax.synthesize paraphrase --input IN.jsonl --output OUT.jsonl --n 3 \
        --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct [--concurrency 64] [--shard 0/4]
    python -m qzhou_jax.synthesize hard_negatives --input OUT.jsonl --output OUT_HN.jsonl --n 3 ...
    python -m qzhou_jax.synthesize merge --output ALL.jsonl OUT.shard0.jsonl OUT.shard1.jsonl ...
    python -m qzhou_jax.synthesize decontaminate --input TRAIN.jsonl --output CLEAN.jsonl
    python -m qzhou_jax.synthesize seed --config configs/synthetic_example.py --dataset trecqa --output SEED.jsonl

Input and output are FlagEmbedding JSONL rows ({"query", "pos": [...], "neg": [...], "prompt"}); outputs add
provenance (source_id, source_index, generator, model, attempt). Every answer is journaled in OUTPUT.journal.jsonl
before use: rerun the same command after a crash and nothing finished is requested again. The summary goes to
OUTPUT.summary.json and, as one JSON line, to stdout. The API key is read from $OPENAI_API_KEY (--api-key-env).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.synthesis import prompts

log = logging.getLogger(__name__)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="FlagEmbedding JSONL rows (query, pos, neg?, prompt?)")
    p.add_argument("--output", required=True, help="output JSONL; OUTPUT.journal.jsonl / .summary.json beside it")
    p.add_argument("--n", type=int, required=True, help="outputs per input row")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (else $OPENAI_BASE_URL)")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    p.add_argument("--max-attempts", type=int, default=20, help="requests per item until N outputs pass the checks")
    p.add_argument("--max-requests", type=int, default=None, help="stop cleanly after this many HTTP requests")
    p.add_argument("--max-unusable", type=int, default=None,
                   help="stop after this many answers in a row are unusable (no JSON object, no well-formed entry, "
                        "or a request failed after its retries) [max(--concurrency, 8)]; 0: never")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="I/N: this process takes rows with index %% N == I")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request before it is retried")
    p.add_argument("--max-retries", type=int, default=10, help="retries of one request after 429/5xx/timeouts")
    p.add_argument("--backoff-base", type=float, default=1.0)
    p.add_argument("--backoff-cap", type=float, default=60.0)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--no-structured-output", dest="structured", action="store_false",
                   help="never send response_format json_schema (parse JSON from the text)")
    p.add_argument("--journal", default=None, help="response journal [OUTPUT.journal.jsonl]")
    p.add_argument("--summary", default=None, help="summary JSON [OUTPUT.summary.json]")
    _add_decontam_args(p)
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")


def _add_decontam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decontaminate-tasks", default="all",
                   help="local evaluation tasks to decontaminate against: all, none, or a comma list")
    p.add_argument("--decontaminate-file", action="append", default=[], dest="decontaminate_files",
                   help="more evaluation texts (JSONL or one text per line); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.synthesize", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in prompts.GENERATORS:
        _add_generation_args(sub.add_parser(name, help=f"{name} generator"))
    m = sub.add_parser("merge", help="merge --shard outputs (and their summaries) into one")
    m.add_argument("--output", required=True)
    m.add_argument("--summary", default=None)
    m.add_argument("shards", nargs="+", help="shard output files, any order")
    s = sub.add_parser("seed", help="write one retrieval dataset of a training config as generator input")
    s.add_argument("--config", required=True, help="training config file (path[:arg])")
    s.add_argument("--dataset", required=True, help="dataset name in config.data.datasets")
    s.add_argument("--output", required=True)
    d = sub.add_parser("decontaminate", help="drop rows of any FlagEmbedding file that match evaluation texts")
    d.add_argument("--input", required=True)
    d.add_argument("--output", required=True)
    _add_decontam_args(d)
    for sub_parser in sub.choices.values():
        cli_errors.add_debug_flag(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Prints the summary as one JSON line. Exit status 0 only when the output is complete: 1 when items are short,
    failed or unfinished, or the run stopped on a wave of unusable answers; 2 for bad usage (and HTTP 401/403)."""
    args = build_parser().parse_args(argv)
    cli_errors.setup_logging(args.debug, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    with cli_errors.reported(args.debug):
        summary = _run(args)
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        if "complete" in summary and not summary["complete"]:
            from qzhou_jax.synthesis.run import shortfall

            raise cli_errors.RunFailed(shortfall(summary))
    return summary


def _run(args) -> dict:
    if args.command == "merge":
        from qzhou_jax.synthesis.merge import merge

        summary = merge(args.shards, args.output, args.summary)
    elif args.command == "seed":
        from qzhou_jax.synthesis.seed import write_seed
        from qzhou_jax.config import load_config

        summary = write_seed(load_config(args.config), args.dataset, args.output)
    elif args.command == "decontaminate":
        from qzhou_jax.synthesis.decontam import build, decontaminate_file

        summary = decontaminate_file(args.input, args.output, build(args.decontaminate_tasks,
                                                                    args.decontaminate_files))
    else:
        from qzhou_jax.synthesis.run import SynthesisConfig, run

        fields = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
        summary = run(SynthesisConfig(generator=args.command, **fields))  # AuthError: exit 2, all so far saved
    return summary


if __name__ == "__main__":
    main()
