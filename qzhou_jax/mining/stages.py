"""Re-mining between training stages: before a stage whose `mine.enabled`, its retrieval datasets get new hard
negatives from the previous stage's final model (train.py's multi-stage loop calls `remine_for_stage`).

For each named dataset (config `mine.datasets`; empty: every retrieval dataset) the samples the stage would
train on (`pipeline.load_samples`: after max_examples) are written as FlagEmbedding rows to
`STAGE_WORKDIR/mined/<name>.input.jsonl`, mined into `<name>.jsonl`, and the returned config points the dataset
at that file (`jsonl:` source, `retrieval` transform, max_examples already applied). A `<name>.done.json`
records the settings of a finished dataset; a rerun (e.g. resuming the stage) with the same settings reuses it,
and an interrupted one reuses the embedding cache under `mined/cache`.
Refreshing negatives every K steps during a stage: mining/refresh.py (`mine.every`), which shares
`select_config`, `flag_embedding_row` and `point_at` with this module.
"""
from __future__ import annotations

import json
import logging
import os

import jax

from qzhou_jax.run import checkpoint
from qzhou_jax.config.defaults import REQUIRED
from qzhou_jax.data import pipeline
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.formats import RETRIEVAL
from qzhou_jax.data.spec import DataConfig, plain
from qzhou_jax.eval.tasks import evaluation_texts
from qzhou_jax.mining import cache as mcache
from qzhou_jax.mining.model import load_encoder
from qzhou_jax.mining.run import MineConfig, mine, write_jsonl
from qzhou_jax.mining.select import SelectConfig

log = logging.getLogger(__name__)


def mining_model(stage_cfg, previous_workdir: str | None) -> str:
    """What mines a stage's negatives: mine.model if set ("base": model.hf_dir), else the model that starts the
    stage (the previous stage's workdir, else init_from, else model.hf_dir)."""
    chosen = stage_cfg.mine.get("model") or ""
    hf_dir = stage_cfg.model.get("hf_dir") or ""
    if chosen == "base":
        model = hf_dir
    elif chosen:
        model = chosen
    else:
        init_from = stage_cfg.get("init_from") or ""
        model = previous_workdir or (init_from if init_from not in ("base", REQUIRED) else "") or hf_dir
    if not model:
        raise ValueError("mine.enabled: no model to mine with (mine.model, a previous stage, init_from or "
                         "model.hf_dir)")
    return model


def remine_for_stage(stage_cfg, previous_workdir: str | None, stage_workdir: str):
    """A copy of `stage_cfg` whose mined datasets read the negatives mined with the previous stage's model."""
    m = stage_cfg.mine
    model = mining_model(stage_cfg, previous_workdir)
    data = DataConfig.from_config(stage_cfg.data)
    wanted = tuple(m.datasets) or tuple(s.name for s in data.datasets if s.task == RETRIEVAL)
    specs = {s.name: s for s in data.datasets}
    for name in wanted:
        if name not in specs:
            raise ValueError(f"mine.datasets: no dataset {name!r} in this stage; it has {sorted(specs)}")
        if specs[name].task != RETRIEVAL:
            raise ValueError(f"mine.datasets: {name!r} is {specs[name].task!r} data; only retrieval is mined")
    out_dir = os.path.join(stage_workdir, "mined")
    os.makedirs(out_dir, exist_ok=True)
    step = _model_step(model)
    encoder, new_sources = None, {}
    for name in wanted:
        spec = specs[name]
        select = select_config(m, spec.num_negatives)
        max_length = m.max_length or spec.max_len_passage
        settings = dict(model=os.path.abspath(model), step=step, source=spec.source, split=spec.split,
                        max_examples=spec.max_examples, seed=data.seed, select=repr(select), max_length=max_length,
                        prompt_sep=data.prompt_sep)
        output, done = os.path.join(out_dir, f"{name}.jsonl"), os.path.join(out_dir, f"{name}.done.json")
        new_sources[name] = output
        if _read_json(done).get("settings") == settings and os.path.exists(output):
            print(f"mine: {name}: reusing {output}", flush=True)
            continue
        rows_path = os.path.join(out_dir, f"{name}.input.jsonl")
        if jax.process_index() == 0:
            samples = pipeline.load_samples(spec, SkipCounter.for_data(data), data.seed,
                                            evaluation_texts=evaluation_texts)
            write_jsonl(rows_path, (flag_embedding_row(s, spec.instruction) for s in samples))
        _barrier(f"mine-input-{name}")
        if encoder is None or encoder.max_length != max_length:
            encoder = load_encoder(model, max_length=max_length, batch_size=m.batch_size)
        print(f"mine: {name}: mining with {model} (step {step})", flush=True)
        stats = mine(MineConfig(model=model, input=rows_path, output=output, select=select,
                                prompt_sep=data.prompt_sep, cache=m.get("cache") or os.path.join(out_dir, "cache"),
                                max_length=max_length, encode_chunk=m.encode_chunk), encoder=encoder)
        print(f"mine: {name}: {json.dumps(stats)}", flush=True)
        if jax.process_index() == 0:
            mcache._write_json(done, dict(settings=settings, stats=stats))
        _barrier(f"mine-done-{name}")
    return point_at(stage_cfg, new_sources)


RULES = ("none", "relative_margin", "max_score_ratio")


def select_config(m, num_negatives: int) -> SelectConfig:
    if m.rule not in RULES:
        raise ValueError(f"mine.rule {m.rule!r}: expected one of {RULES}")
    rule = {m.rule: float(m.rule_value)} if m.rule != "none" else {}
    return SelectConfig(negatives=m.negatives or num_negatives, window=tuple(m.window), keep_existing=m.keep_existing,
                        min_positive_rank=m.min_positive_rank or None,
                        min_positive_score=m.min_positive_score if m.min_positive_score > -1 else None, seed=m.seed,
                        **rule)


def flag_embedding_row(sample, default_instruction: str) -> dict:
    """A FlagEmbedding row; `prompt` is the instruction training would use (the sample's, else the dataset's)."""
    row = dict(query=sample.query, pos=[sample.positive], neg=list(sample.negatives))
    if sample.instruction or default_instruction:
        row["prompt"] = sample.instruction or default_instruction
    return row


def point_at(stage_cfg, sources: dict[str, str]):
    """A copy of `stage_cfg` whose datasets named in `sources` read those FlagEmbedding files instead."""
    cfg = stage_cfg.copy_and_resolve_references()
    datasets = []
    for entry in plain(cfg.data.datasets):
        entry = dict(entry)
        if entry["name"] in sources:  # the rows carry the instruction as "prompt"; max_examples already applied
            entry.update(source=f"jsonl:{sources[entry['name']]}", task="retrieval", transform="retrieval",
                         fields={}, split="train", max_examples=None, max_chars=None, max_words=None)
        datasets.append(entry)
    cfg.data.datasets = type(cfg.data.datasets)(datasets) if isinstance(cfg.data.datasets, (list, tuple)) \
        else datasets
    return cfg


def _model_step(model: str):
    if checkpoint.is_workdir(model):
        steps = [int(d) for d in os.listdir(checkpoint.checkpoint_dir(model)) if d.isdigit()]
        return max(steps, default=None)
    return None


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
