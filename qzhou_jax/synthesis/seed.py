"""Seed files for synthesis: one retrieval dataset of a training config (any source the data config reads, with
its max_examples slice) written as FlagEmbedding JSONL, the generators' input.

    python -m qzhou_jax.synthesize seed --config configs/synthetic_example.py --dataset trecqa --output seed.jsonl
"""
from __future__ import annotations

import json

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.formats import RETRIEVAL
from qzhou_jax.data.pipeline import load_samples
from qzhou_jax.data.spec import DataConfig
from qzhou_jax.eval.tasks import evaluation_texts
from qzhou_jax.synthesis.cache import write_atomic


def _data_configs(config):
    """config.data, or every stage's data of a multi-stage config."""
    if "stages" in config:
        return [stage.data for stage in config.stages.values()]
    return [config.data]


def write_seed(config, dataset: str, output: str, seed: int | None = None) -> dict:
    specs = {s.name: (s, data.seed) for data in map(DataConfig.from_config, _data_configs(config))
             for s in data.datasets}
    if dataset not in specs:
        raise UsageError(f"dataset {dataset!r} not in the config; datasets: {sorted(specs)}")
    spec, data_seed = specs[dataset]
    if spec.task != RETRIEVAL:
        raise UsageError(f"dataset {dataset!r} is {spec.task!r} data; the generators take retrieval pairs")
    counter = SkipCounter(skip_invalid=False)
    samples = load_samples(spec, counter, data_seed if seed is None else seed, evaluation_texts=evaluation_texts)
    rows = [{"query": s.query, "pos": [s.positive], "neg": list(s.negatives), "prompt": s.instruction,
             "source_id": f"{dataset}:{i}"} for i, s in enumerate(samples)]
    write_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"dataset": dataset, "source": spec.source, "split": spec.split, "rows": len(rows), "output": output}
