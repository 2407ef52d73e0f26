"""`python -m qzhou_jax.data.prepare --config CFG --out DIR [--workers P] [--shard I/N]`: datasets -> validated
ArrayRecord shards + manifest (qzhou_jax/data/prepare.py)."""
from __future__ import annotations

import argparse
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.config import parse_config_args
from qzhou_jax.data import prepare as prep
from qzhou_jax.data.inspect import data_block
from qzhou_jax.eval.tasks import evaluation_texts


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    return i, n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.data.prepare", description=prep.__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file with get_config() ('file.py:arg' passes arg)")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per dataset)")
    parser.add_argument("--shard", type=_shard_arg, default=(0, 1), help="I/N: this host's share of the datasets")
    parser.add_argument("--workers", type=int, default=1, help="datasets prepared in parallel processes")
    parser.add_argument("--records-per-shard", type=int, default=prep.DEFAULT_RECORDS_PER_SHARD)
    parser.add_argument("--group-size", type=int, default=prep.DEFAULT_GROUP_SIZE,
                        help="records per ArrayRecord chunk (1 = Grain's advice; see docs/data.md)")
    cli_errors.add_debug_flag(parser)
    args, cfg = parse_config_args(parser, argv)
    if args.group_size < 1:
        parser.error(f"--group-size {args.group_size}: need at least 1 record per chunk")
    with cli_errors.reported(args.debug):  # bad rows, too many skipped, another prepare's folder: one line, exit 2
        data = data_block(cfg)
        prep.prepare(data, args.out, shard=args.shard, workers=args.workers, records_per_shard=args.records_per_shard,
                group_size=args.group_size, log=lambda msg: print(msg, flush=True),
                evaluation_texts=evaluation_texts)
    return 0


if __name__ == "__main__":
    main()
