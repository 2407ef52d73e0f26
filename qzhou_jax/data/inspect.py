"""Inspect a config's data pipeline: datasets, sizes, sampling probabilities, decoded batches, length histograms,
skipped-row counts.

    python -m qzhou_jax.data.inspect --config configs/data_example.py [--batches 3] [--hist-batches 50]
        [--tokenizer DIR] [--process-count N]

`--config` names an ml_collections config file with get_config(); "file.py:arg" passes arg to get_config, and
`--config.a.b=value` overrides apply as in training (qzhou_jax.config.load_config).
Its `data` field is read (see spec.py); a config that is itself the data block also works.
"""
from __future__ import annotations

import collections

import numpy as np

from qzhou_jax.data.spec import DataConfig


def data_block(config):
    """The data block of a training config; for a multi-stage config (configs/demo.py), the last stage's."""
    if "stages" in config:
        config = list(config.stages.values())[-1]
    return config.data if "data" in config else config


def _decode(tokenizer, ids, mask) -> str:
    return tokenizer.decode(ids[mask.astype(bool)].tolist())


def describe_batch(step: int, batch, info, tokenizer, examples: int = 2, width: int = 160) -> str:
    d = int(batch["dataset_id"][0])
    lines = [f"step {step}: dataset {info.names[d]} ({batch['task']}), "
             + ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if k != "task")]
    for i in range(min(examples, len(batch["dataset_id"]))):
        anchor = _decode(tokenizer, batch["anchor_ids"][i], batch["anchor_mask"][i])
        lines.append(f"  [{i}] anchor: {anchor[:width]!r}")
        for c in range(batch["cand_ids"].shape[1]):
            if batch["cand_valid"][i, c]:
                text = _decode(tokenizer, batch["cand_ids"][i, c], batch["cand_mask"][i, c])
                lines.append(f"      cand {c}: {text[:width]!r}")
        if info.tasks[d] == "pair_score":
            lines.append(f"      score {batch['score'][i]:.3f}")
        if info.label_vocabularies[d]:
            names = {v: k for k, v in info.label_vocabularies[d].items()}
            lines.append("      labels " + str([names.get(int(x), "-") for x in batch["labels"][i]]))
    return "\n".join(lines)


def length_histograms(batches, info, data: DataConfig) -> str:
    """Token lengths per dataset and side, counted into the configured buckets; 'at max' = truncated or exact."""
    lengths = collections.defaultdict(list)
    for batch in batches:
        d = int(batch["dataset_id"][0])
        lengths[(d, "anchor")].extend(batch["anchor_mask"].sum(-1).tolist())
        cand = batch["cand_mask"].sum(-1)[batch["cand_valid"]]
        lengths[(d, "candidates")].extend(cand.tolist())
    lines = []
    for (d, side), values in sorted(lengths.items()):
        spec = data.datasets[d]
        max_len = spec.max_len_query if side == "anchor" else spec.max_len_passage
        edges = sorted({b for b in data.buckets if b < max_len} | {max_len})
        values = np.asarray(values)
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges))[: len(edges)]
        lines.append(f"{info.names[d]} {side}: n={len(values)} mean={values.mean():.1f} max={values.max()} "
                     f"at max_len {max_len}: {np.mean(values >= max_len):.1%}")
        peak = max(counts.max(), 1)
        lo = 0
        for edge, count in zip(edges, counts):
            lines.append(f"  {lo + 1:>5}-{edge:<5} {count:>7} {'#' * int(40 * count / peak)}")
            lo = edge
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m qzhou_jax.data.inspect`: the command is qzhou_jax/cli/inspect.py
    from qzhou_jax.cli.inspect import main

    main()
