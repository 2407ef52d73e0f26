"""Merge two or more trained models (training workdirs or HF directories) into one HF / sentence-transformers export.

    python -m qzhou_jax.merge --method linear --models RUN_A RUN_B [RUN_C ...] [--weights 1 1 1] --out DIR
    python -m qzhou_jax.merge --method slerp  --models RUN_A RUN_B --weights 0.5 0.5 --out DIR
    python -m qzhou_jax.merge --method ties   --models RUN_A RUN_B --base BASE_DIR --density 0.2 --out DIR

The formulas are mergekit's (qzhou_jax/merging/formulas.py); mergekit itself is not used (merging/models.py says
why). Inputs: workdirs (their latest checkpoint, LoRA merged in; a multi-stage workdir means its last stage) or HF
Qwen2 directories (exports, bases); all must share one architecture. The output takes the first model's tokenizer
and prompt format; `--workdir-out DIR` also writes a params-only checkpoint there, so DIR can be evaluated,
exported, mined with or trained from (`init_from`) like a training run. A staged config merges as a stage of its
own (config block `merge`, merging/stages.py).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from qzhou_jax import cli_errors
from qzhou_jax.merging import METHODS


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.merge", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--models", required=True, nargs="+", help="two or more workdirs or HF directories")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one per model (default: equal); slerp's t is w2 / (w1 + w2)")
    parser.add_argument("--base", default=None, help="ties: the models' common ancestor (workdir or HF dir)")
    parser.add_argument("--density", type=float, default=0.2, help="ties: fraction of each task vector kept")
    parser.add_argument("--scale", type=float, default=1.0, help="ties: lambda, the merged task vector's scale")
    parser.add_argument("--no-normalize", action="store_true",
                        help="linear / ties: do not divide by the (agreeing) weights' sum")
    parser.add_argument("--out", required=True, help="the merged HF / sentence-transformers directory")
    parser.add_argument("--workdir-out", default=None, help="also a params-only checkpoint here (a workdir)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--overwrite", action="store_true")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("--models: give two or more models")
    if args.weights is not None and len(args.weights) != len(args.models):
        parser.error(f"--weights: {len(args.weights)} weights for {len(args.models)} models")
    if args.method == "ties" and not args.base:
        parser.error("--method ties needs --base (the models' common ancestor)")
    if args.method == "slerp" and len(args.models) != 2:
        parser.error("--method slerp merges exactly two models")
    cli_errors.setup_logging(args.debug)
    with cli_errors.reported(args.debug):
        from qzhou_jax.merging.models import merge_models, write_merged

        merged = merge_models(args.method, args.models, args.weights, base=args.base, density=args.density,
                              scale=args.scale, normalize=not args.no_normalize)
        write_merged(*merged, args.out, dtype=args.dtype, workdir_out=args.workdir_out, overwrite=args.overwrite)
    summary = {"out": os.path.abspath(args.out), **merged[4]}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
