"""`python -m qzhou_jax.eval.mteb_local --model DIR --tasks ... --output r.json`: the real mteb package on the local
tasks (qzhou_jax/eval/mteb_local.py)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.cli.model_flags import add_model_flags, each_model
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.eval import mteb_local as ml
from qzhou_jax.eval.st_encoder import ModelSpecError


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.eval.mteb_local", description=ml.__doc__.split("\n")[0])
    add_model_flags(parser)
    parser.add_argument("--tasks", default="all", help=f"comma-separated, or 'all': {', '.join(ml.MTEB_TASKS)}")
    parser.add_argument("--output", required=True, help="results JSON: [{model, task, split, metric, value}]")
    parser.add_argument("--max-examples", type=int, default=0, help="evaluate's deterministic subsample (0 = all)")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    # force: importing mteb's dependencies has configured the root logger already, which would hide ours.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", force=True)
    for noisy in ("mteb", "datasets", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # per-batch / per-phase chatter at INFO
    logging.getLogger("mteb.abstasks.abstask").addFilter(ml.DropSuperseded())
    with cli_errors.reported(args.debug):
        return _main(args)


def _main(args) -> list[dict]:
    if args.max_examples < 0:
        raise UsageError(f"--max-examples must be >= 0 (0 = all), got {args.max_examples}")
    try:
        names = ml.task_names(args.tasks)  # before loading any model
    except UsageError as e:
        raise UsageError(f"--tasks: {e}") from None

    rows = []
    for flag, spec, step, name in each_model(args):
        try:
            model = ml.load_model(spec, st_instructions=args.st_instructions, max_length=args.max_length,
                               batch_size=args.batch_size, dtype=args.dtype, step=step, seed=args.seed)
        except (ModelSpecError, FileNotFoundError) as e:
            raise UsageError(f"{flag}: {cli_errors.message(e)}") from None
        rows += ml.evaluate(model, names, max_examples=args.max_examples, model_name=name, batch_size=args.batch_size)
    ev.write_json(rows, args.output)
    print(ev.results_table(rows, ml.main_metrics(names)), flush=True)
    print(f"wrote {args.output}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
