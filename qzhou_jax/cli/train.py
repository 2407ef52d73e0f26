"""`python -m qzhou_jax.train --config FILE[:arg] --workdir DIR [--config.a.b=v ...]`: train; rerun the same
command to resume. The loop: qzhou_jax/train/loop.py."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from qzhou_jax import cli_errors
from qzhou_jax.cli.distributed import initialize_distributed
from qzhou_jax.config import parse_config_args
from qzhou_jax.train import loop
from qzhou_jax.train.loop import AfterStep, run


def main(argv=None, after_step: AfterStep | None = None) -> None:
    """`python -m qzhou_jax.train --config FILE[:arg] --workdir DIR [--config.a.b=v ...]` (argv: without the
    program name; None reads sys.argv)."""
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.train", description=loop.__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file with get_config() ('file.py:arg' passes arg)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, TensorBoard and the export go here")
    cli_errors.add_debug_flag(parser)
    args, cfg = parse_config_args(parser, argv)
    cli_errors.setup_logging(args.debug, stream=sys.stdout, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with cli_errors.reported(args.debug):  # known errors: one line naming the key / file, exit 2 or 1
        if cfg.get("distributed"):
            initialize_distributed()
        summary = run(cfg, args.workdir, after_step=after_step)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("losses", "stages")}), flush=True)


if __name__ == "__main__":
    main()
