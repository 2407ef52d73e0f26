"""Hard negatives refreshed during training (`mine.every = K` in a stage; KaLM-V2, Conan: every ~100 steps).

Every K steps (after step s's update, s < train.steps) the live params re-embed each mined dataset's corpus (the
positives and negatives of its rows: the samples the stage trains on, written once to
`WORKDIR/mined/refresh/<name>.input.jsonl`) and its queries, search it (mining/search.py: exact, sharded over the
devices) and draw new negatives with the stage's `mine` rules into `WORKDIR/mined/step_<s>/<name>.jsonl`; the
trainer then rebuilds its data pipeline on those files and puts the new iterator at the position the old one had
reached, so batch s+1 onwards draws the new negatives (the sampling order is unchanged while no row is dropped).

Exact resume: the refresh in force is part of the checkpointed state. Its record {"step", "sources", "sha256"}
goes into every checkpoint's meta ("mined"); a resumed run rebuilds the pipeline from the recorded files (their
digests checked) before restoring the Grain iterator, and redoes a refresh that happened after its checkpoint.
The redo sees the same params, so it reproduces the same negatives; its embeddings come from the cache
(`WORKDIR/mined/step_<s>/cache`, keyed by the params' fingerprint, mining/cache.py) when the first attempt got
that far. Caches of earlier refreshes are deleted after a refresh (outputs stay: older checkpoints name them).

The cost (encode / search / total seconds, rows, mined negatives) is printed and written to metrics.jsonl as
`mine/*` scalars. One host only: like evaluation during training, the encoder reads embeddings back on the host.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

from qzhou_jax import atomic
from qzhou_jax.data import pipeline
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.formats import RETRIEVAL
from qzhou_jax.data.spec import DataConfig
from qzhou_jax.eval.tasks import evaluation_texts
from qzhou_jax.mining.run import MineConfig, mine, write_jsonl
from qzhou_jax.mining.stages import flag_embedding_row, point_at, select_config

log = logging.getLogger(__name__)

RECORD = "refresh.json"


def mined_dataset_names(stage_cfg) -> list[str]:
    """The datasets a stage re-mines: `mine.datasets`, or every retrieval dataset; errors name the problem."""
    data = DataConfig.from_config(stage_cfg.data)
    specs = {s.name: s for s in data.datasets}
    wanted = list(stage_cfg.mine.datasets) or [s.name for s in data.datasets if s.task == RETRIEVAL]
    if not wanted:
        raise ValueError("the stage has no retrieval dataset to mine")
    for name in wanted:
        if name not in specs:
            raise ValueError(f"mine.datasets: no dataset {name!r} in this stage; it has {sorted(specs)}")
        if specs[name].task != RETRIEVAL:
            raise ValueError(f"mine.datasets: {name!r} is {specs[name].task!r} data; only retrieval is mined")
    return wanted


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Refresher:
    """Owns a stage's refreshes: `due(step)`, `refresh(step, params)` -> record, `config_for(record)` -> the
    stage config whose mined datasets read the record's files (record None: the stage config itself)."""

    def __init__(self, cfg, workdir: str, tokenizer, model_config, prompt, *, total_steps: int):
        self.cfg, self.tokenizer, self.prompt, self.total_steps = cfg, tokenizer, prompt, total_steps
        self.model_config = model_config.whole()  # inference: no stop_gradient split (LoRA stays unmerged)
        self.every = int(cfg.mine.every)
        self.root = os.path.join(workdir, "mined")
        self.data = DataConfig.from_config(cfg.data)
        self.names = mined_dataset_names(cfg)
        self.specs = {s.name: s for s in self.data.datasets}

    def due(self, step: int) -> bool:
        return step % self.every == 0 and step < self.total_steps

    def input_path(self, name: str) -> str:
        return os.path.join(self.root, "refresh", f"{name}.input.jsonl")

    def _write_inputs(self) -> None:
        """The rows every refresh mines from (the stage's own samples): written once, a pure function of the
        config, so a rerun writes the same file."""
        for name in self.names:
            path = self.input_path(name)
            if not os.path.exists(path):
                spec = self.specs[name]
                samples = pipeline.load_samples(spec, SkipCounter.for_data(self.data), self.data.seed,
                                                evaluation_texts=evaluation_texts)
                write_jsonl(path, (flag_embedding_row(s, spec.instruction) for s in samples))

    def config_for(self, record: dict | None):
        """The stage config that trains on `record`'s negatives (each file's digest checked: a resumed run must
        draw exactly what the interrupted one drew)."""
        if not record:
            return self.cfg
        for name, path in record["sources"].items():
            if not os.path.exists(path):
                raise FileNotFoundError(f"mine refresh at step {record['step']}: {path} is gone; the checkpoint "
                                        f"trains on it (restore the file or start the stage again)")
            if record.get("sha256", {}).get(name) not in (None, _sha256(path)):
                raise ValueError(f"mine refresh at step {record['step']}: {path} changed since it was mined")
        return point_at(self.cfg, record["sources"])

    def refresh(self, step: int, params) -> dict:
        """Mines every dataset with `params` (the live, possibly sharded, training params); returns the record."""
        from qzhou_jax.encode import Encoder

        t0 = time.time()
        self._write_inputs()
        m = self.cfg.mine
        out_dir = os.path.join(self.root, f"step_{step}")
        sources, digests, stats = {}, {}, {}
        encoders = {}
        for name in self.names:
            spec = self.specs[name]
            max_length = m.max_length or spec.max_len_passage
            if max_length not in encoders:
                encoders[max_length] = Encoder(params, self.model_config, self.tokenizer, max_length=max_length,
                                               batch_size=m.batch_size, prompt=self.prompt)
            output = os.path.join(out_dir, f"{name}.jsonl")
            stats[name] = mine(MineConfig(model="<training params>", input=self.input_path(name), output=output,
                                          select=select_config(m, spec.num_negatives),
                                          prompt_sep=self.data.prompt_sep, cache=os.path.join(out_dir, "cache"),
                                          max_length=max_length, encode_chunk=m.encode_chunk, progress=False),
                               encoder=encoders[max_length])
            sources[name], digests[name] = output, _sha256(output)
        record = {"step": step, "sources": sources, "sha256": digests}
        seconds = time.time() - t0
        atomic.write_json(os.path.join(out_dir, RECORD), {**record, "seconds": seconds, "stats": stats})
        self._prune_caches(step)
        record["cost"] = {"seconds": round(seconds, 3),
                          "encode_s": round(sum(s["encode_s"] for s in stats.values()), 3),
                          "search_s": round(sum(s["search_s"] for s in stats.values()), 3),
                          "rows": sum(s["rows_out"] for s in stats.values()),
                          "mined_negatives": sum(s["mined_negatives"] for s in stats.values())}
        return record

    def _prune_caches(self, step: int) -> None:
        for entry in os.listdir(self.root):
            if entry.startswith("step_") and entry != f"step_{step}":
                shutil.rmtree(os.path.join(self.root, entry, "cache"), ignore_errors=True)


def describe(record: dict) -> str:
    cost = record.get("cost", {})
    return (f"mine refresh at step {record['step']}: {cost.get('seconds', 0):.1f}s "
            f"(encode {cost.get('encode_s', 0):.1f}s, search {cost.get('search_s', 0):.1f}s), "
            f"{cost.get('rows', 0)} rows, {cost.get('mined_negatives', 0)} mined negatives -> "
            + json.dumps(sorted(record["sources"])))
