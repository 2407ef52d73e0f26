"""`python -m qzhou_jax.data.inspect --config configs/X.py`: datasets, sizes, sampling probabilities, decoded
batches, length histograms, skipped rows (qzhou_jax/data/inspect.py)."""
from __future__ import annotations

import argparse
import collections
import sys

from qzhou_jax import cli_errors
from qzhou_jax.config import parse_config_args
from qzhou_jax.data import inspect
from qzhou_jax.data.pipeline import build_pipeline, load_datasets, mixture_info
from qzhou_jax.data.spec import DataConfig
from qzhou_jax.eval.tasks import evaluation_texts
from qzhou_jax.tokenizer import load_tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.data.inspect", description=inspect.__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="config file with get_config() ('file.py:arg' passes arg)")
    parser.add_argument("--batches", type=int, default=3, help="decoded batches to print")
    parser.add_argument("--hist-batches", type=int, default=50, help="batches for the length histograms")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: built-in Qwen2.5)")
    parser.add_argument("--process-count", type=int, default=1, help="hosts to divide the global batch by")
    cli_errors.add_debug_flag(parser)
    args, cfg = parse_config_args(parser, argv)
    with cli_errors.reported(args.debug):  # bad rows, refused datasets, damaged shards: one line, exit 2
        return _inspect(args, cfg)


def _inspect(args, cfg) -> int:
    data = DataConfig.from_config(inspect.data_block(cfg))
    datasets, counter = load_datasets(data, evaluation_texts=evaluation_texts)
    info = mixture_info(data, datasets, counter, args.process_count)
    print("== mixture (alpha={}, eta={})".format(data.alpha, data.eta))
    print(info.table())
    print("\n== skipped rows")
    print(counter.report() or "none")

    tokenizer = load_tokenizer(args.tokenizer)
    dataset, info = build_pipeline(data, tokenizer, process_index=0, process_count=args.process_count,
                                   datasets=datasets, counter=counter)
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(max(args.batches, args.hist_batches))]
    print(f"\n== first {args.batches} batches (host 0 of {args.process_count})")
    for step, batch in enumerate(batches[: args.batches]):
        print(inspect.describe_batch(step, batch, info, tokenizer))
    print(f"\n== token lengths over {len(batches)} batches")
    print(inspect.length_histograms(batches, info, data))
    steps = collections.Counter(int(b["dataset_id"][0]) for b in batches)
    print("\n== dataset share in those batches: "
          + ", ".join(f"{info.names[d]} {n / len(batches):.2f} (p={info.probabilities[d]:.2f})"
                      for d, n in sorted(steps.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
