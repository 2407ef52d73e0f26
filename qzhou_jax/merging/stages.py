"""A merge stage of a staged config (config block `merge`, `merge.enabled=True`): the stage merges earlier stages
(by name) or paths instead of training, into STAGE/export plus a params-only checkpoint in STAGE, so the stages
after it (`init_from`), `export --workdir RUN` and `evaluate --model RUN` read it like a trained stage."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from qzhou_jax import atomic
from qzhou_jax.merging.models import merge_models, write_merged


def merge_stage(stage_cfg, run_workdir: str, stage_dir: str, stage_names: Sequence[str]) -> dict[str, Any]:
    """Merges `stage_cfg.merge.models` (earlier stage names of the run, or paths; "base" = the stage's
    model.hf_dir) into STAGE/export and a params-only checkpoint in STAGE; STAGE/done.json marks it finished (a
    rerun does not merge again). Returns the stage's summary."""
    done = os.path.join(stage_dir, "done.json")
    if os.path.exists(done):
        with open(done) as f:
            print(f"{stage_dir} already merged ({done}); not merged again", flush=True)
            return json.load(f)
    m = stage_cfg.merge

    def resolve(spec: str) -> str:
        if spec == "base":
            return stage_cfg.model.hf_dir
        return os.path.join(run_workdir, spec) if spec in stage_names else spec
    models = [resolve(x) for x in m.models]
    base = resolve(m.base) if m.base else None
    weights = list(m.weights) or None
    print(f"merge ({m.method}): {models}" + (f", weights {weights}" if weights else "") +
          (f", base {base}" if base else ""), flush=True)
    merged = merge_models(m.method, models, weights, base=base, density=float(m.density), scale=float(m.scale),
                          normalize=bool(m.normalize))
    export_dir = os.path.join(stage_dir, "export")
    write_merged(*merged, export_dir, dtype=m.dtype, workdir_out=stage_dir, overwrite=True)
    summary = {"step": 0, "merged": merged[4]["merge"], "export_dir": export_dir, "workdir": stage_dir}
    atomic.write_json(done, summary)
    print(f"merged model written to {export_dir}", flush=True)
    return summary
