"""`python -m qzhou_jax.evaluate --model DIR --tasks all --output r.json [--compare DIR2]`: local MTEB-style
evaluation (qzhou_jax/eval/evaluate.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.cli.model_flags import add_model_flags, each_model
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.eval.st_encoder import ModelSpecError


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.evaluate", description=ev.__doc__.split("\n")[0])
    add_model_flags(parser)
    parser.add_argument("--tasks", default="all", help=f"comma-separated, or 'all': {', '.join(ev.TASKS)}")
    parser.add_argument("--output", required=True, help="results JSON: [{model, task, split, metric, value}]")
    parser.add_argument("--split", default=None, help="e.g. dev or test (default: each task's evaluation split; "
                                                      "tasks without the split use theirs)")
    parser.add_argument("--max-examples", type=int, default=0, help="deterministic subsample per task (0 = all)")
    parser.add_argument("--instructions", default=None, help="JSON {task: instruction or null} overriding prompts")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    cli_errors.setup_logging(args.debug)
    with cli_errors.reported(args.debug):
        return _main(args)


def _main(args) -> list[dict]:
    try:
        tasks = ev.get_tasks(args.tasks, args.instructions)  # fail on a bad task name before loading any model
    except KeyError as e:
        raise UsageError(f"--tasks {args.tasks}: {e.args[0]}") from None
    rows = []
    for flag, spec, step, name in each_model(args):
        try:
            encoder = ev.load_encoder(spec, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size,
                                   step=step, seed=args.seed, st_instructions=args.st_instructions)
        except ModelSpecError as e:  # an st: model that is not there: name the flag (other paths name themselves)
            raise UsageError(f"{flag}: {e}") from None
        rows += ev.evaluate(encoder, tasks, split=args.split, max_examples=args.max_examples, model_name=name)
    ev.write_json(rows, args.output)
    print(ev.results_table(rows), flush=True)
    print(f"wrote {args.output}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
