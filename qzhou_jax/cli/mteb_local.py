"""`python -m qzhou_jax.eval.mteb_local --model DIR --tasks ... --output r.json`: the real mteb package on the local
tasks (qzhou_jax/eval/mteb_local.py)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from qzhou_jax import cli_errors
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.eval import mteb_local as ml
from qzhou_jax.eval.st_encoder import ModelSpecError


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.eval.mteb_local", description=ml.__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="HF/export dir, training workdir, random:<preset>, or st:<dir or known name>")
    parser.add_argument("--compare", default=None, help="a second model, shown side by side (same forms)")
    parser.add_argument("--tasks", default="all", help=f"comma-separated, or 'all': {', '.join(ml.MTEB_TASKS)}")
    parser.add_argument("--output", required=True, help="results JSON: [{model, task, split, metric, value}]")
    parser.add_argument("--max-examples", type=int, default=0, help="evaluate's deterministic subsample (0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens per text (truncated beyond); st: models keep their own limit when lower")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a --model workdir")
    parser.add_argument("--compare-step", type=int, default=None, help="checkpoint step of a --compare workdir")
    parser.add_argument("--seed", type=int, default=0, help="init seed of random:<preset> models")
    parser.add_argument("--st-instructions", action="store_true",
                        help="give st: models our instructions as prompts (default: plain texts)")
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

    rows, model_names = [], []
    for flag, spec, step in (("--model", args.model, args.step), ("--compare", args.compare, args.compare_step)):
        if spec is None:
            continue
        name = ev.model_name(spec, step, args.st_instructions, model_names)
        model_names.append(name)
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
