"""Hard-negative mining with the model itself: sharded exact search, the rank window, false-negative rules.

    python -m qzhou_jax.mine --model DIR --input IN.jsonl --output OUT.jsonl [--corpus CORPUS.jsonl]
        [--negatives 4] [--range 10:30] [--relative-margin 0.05 | --max-score-ratio 0.95] [--keep-existing]
        [--instruction TEXT] [--batch-size B] [--cache DIR]

DIR is an HF Qwen2 directory, a qzhou-jax export or a training workdir (latest checkpoint). IN and OUT are
FlagEmbedding rows; OUT's rows keep every input field, with `neg` replaced (or filled, --keep-existing) and a
parallel `neg_meta` [{rank, score, source}]. Corpus embeddings are cached in chunks (default OUT.cache): rerun
after a crash and finished chunks are reused. Several processes: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID (or run on TPU VMs / SLURM) and pass --distributed.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.cli.distributed import initialize_distributed
from qzhou_jax.mining.run import MineConfig, mine
from qzhou_jax.mining.select import SelectConfig, parse_window


def parse_args(argv: Sequence[str] | None = None) -> tuple[MineConfig, bool, bool]:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.mine", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF Qwen2 directory, qzhou-jax export or training workdir")
    parser.add_argument("--input", required=True, help="FlagEmbedding JSONL (query, pos, neg?, prompt?)")
    parser.add_argument("--output", required=True, help="output FlagEmbedding JSONL")
    parser.add_argument("--corpus", default=None, help="extra passages: JSONL of {'text'} or BEIR corpus.jsonl")
    parser.add_argument("--negatives", type=int, default=4, help="negatives per row")
    parser.add_argument("--range", default="10:30", help="rank window START:END: skip the top START, up to END")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--relative-margin", type=float, default=None,
                      help="drop candidates scoring above s(q, pos) - M")
    rule.add_argument("--max-score-ratio", type=float, default=None, help="drop candidates above R * s(q, pos)")
    parser.add_argument("--keep-existing", action="store_true", help="keep the rows' negatives, fill the rest")
    parser.add_argument("--min-positive-rank", type=int, default=None,
                        help="drop rows whose best positive ranks below this (counted)")
    parser.add_argument("--min-positive-score", type=float, default=None,
                        help="drop rows whose best positive scores below this (counted)")
    parser.add_argument("--instruction", default=None, help="query instruction for rows without a 'prompt'")
    parser.add_argument("--prompt-sep", default=None, help="text after 'Query:' (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
    parser.add_argument("--max-length", type=int, default=512, help="token limit of queries and passages")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--cache", default=None, help="embedding cache directory (default OUTPUT.cache)")
    parser.add_argument("--encode-chunk", type=int, default=4096, help="passages per cache file")
    parser.add_argument("--query-batch", type=int, default=256, help="queries per search call")
    parser.add_argument("--corpus-chunk", type=int, default=8192, help="passages per device score block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli_errors.reported(args.debug):  # a bad --range or rule: one line naming it, exit 2
        cfg = _config(args)
    return cfg, args.distributed, args.debug


def _config(args) -> MineConfig:
    select = SelectConfig(negatives=args.negatives, window=parse_window(args.range),
                          relative_margin=args.relative_margin, max_score_ratio=args.max_score_ratio,
                          keep_existing=args.keep_existing, min_positive_rank=args.min_positive_rank,
                          min_positive_score=args.min_positive_score, seed=args.seed)
    cfg = MineConfig(model=args.model, input=args.input, output=args.output, corpus=args.corpus, select=select,
                     instruction=args.instruction, prompt_sep=args.prompt_sep, cache=args.cache,
                     batch_size=args.batch_size, max_length=args.max_length, dtype=args.dtype,
                     encode_chunk=args.encode_chunk, query_batch=args.query_batch, corpus_chunk=args.corpus_chunk)
    return cfg


def main(argv: Sequence[str] | None = None) -> dict:
    """Exit status 0 when every row got its negatives; 1 (after printing the stats) when some got fewer."""
    cfg, distributed, debug = parse_args(argv)
    cli_errors.setup_logging(debug)
    with cli_errors.reported(debug):
        if distributed:
            initialize_distributed()
        stats = mine(cfg)
        print(json.dumps(stats), flush=True)
        if stats["rows_short_of_negatives"]:
            raise cli_errors.RunFailed(
                f"{cfg.output}: {stats['rows_short_of_negatives']} of {stats['rows_out']} rows have fewer than "
                f"--negatives {cfg.select.negatives} negatives (too few eligible passages in --range "
                f"{cfg.select.window[0]}:{cfg.select.window[1]} after the false-negative rule); the rows are "
                f"written; widen --range or relax the rule to fill them")
    return stats


if __name__ == "__main__":
    main()
