"""`python -m qzhou_jax.plan --config FILE --topology v5p-128 [--mfu 0.4]`: the ahead-of-time planner's command
(qzhou_jax/train/plan.py)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from qzhou_jax import cli_errors
from qzhou_jax.config import parse_config_args
from qzhou_jax.train import plan as planner


def main(argv=None) -> None:
    """argv: without the program name; None reads sys.argv. Exits 0 when every step fits, 2 when one does not."""
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.plan", description=planner.__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file with get_config() ('file.py:arg' passes arg)")
    parser.add_argument("--topology", required=True,
                        help="v4-N | v5p-N | v5e-N | v6e-N (TPU), a100xN | h100xN | h200xN | b200xN")
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="assumed model FLOPs utilisation for the step-time / days estimate")
    parser.add_argument("--hbm-gib", "--hbm_gib", dest="hbm_gib", type=float, default=0.0,
                        help="memory budget per chip in GiB (0: the chip's HBM)")
    parser.add_argument("--json", default="", help="also write the report as JSON to this path")
    cli_errors.add_debug_flag(parser)
    args, cfg = parse_config_args(parser, argv)
    cli_errors.setup_logging(args.debug, level=logging.WARNING, fmt="%(levelname)s %(name)s: %(message)s",
                             stream=sys.stdout)
    with cli_errors.reported(args.debug):  # PlanError: exit 1; config mistakes: exit 2
        report = planner.plan(cfg, args.topology, mfu=args.mfu, hbm_gib=args.hbm_gib)
    print(planner.format_report(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(0 if report["fits"] else 2)


if __name__ == "__main__":
    main()
