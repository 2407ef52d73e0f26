"""The flags that name the models a command evaluates, shared by `evaluate` and `mteb_local` (not a command):
`--model` and an optional `--compare`, each a HF/export dir, a training workdir (with `--step` / `--compare-step`),
`random:<preset>` or `st:<dir or known name>`, and how they encode."""
from __future__ import annotations

import argparse
from typing import Iterator

from qzhou_jax.eval import evaluate as ev


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="HF/export dir, training workdir, random:<preset>, or st:<dir or known name>")
    parser.add_argument("--compare", default=None, help="a second model, shown side by side (same forms)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens per text (truncated beyond); st: models keep their own limit when lower")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a --model workdir")
    parser.add_argument("--compare-step", type=int, default=None, help="checkpoint step of a --compare workdir")
    parser.add_argument("--seed", type=int, default=0, help="init seed of random:<preset> models")
    parser.add_argument("--st-instructions", action="store_true",
                        help="give st: models our instructions as sentence-transformers prompts (default: plain texts)")


def each_model(args) -> Iterator[tuple[str, str, int | None, str]]:
    """(flag, spec, step, display name) of --model, then --compare when given; names are made distinct."""
    names: list[str] = []
    for flag, spec, step in (("--model", args.model, args.step), ("--compare", args.compare, args.compare_step)):
        if spec is None:
            continue
        name = ev.model_name(spec, step, args.st_instructions, names)
        names.append(name)
        yield flag, spec, step, name
