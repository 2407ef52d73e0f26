"""Trained models in and out of a merge: workdirs and HF directories loaded as host param trees of one layout,
merged with the formulas of merging/formulas.py, written as an HF / sentence-transformers export (and optionally
a params-only checkpoint workdir).

Inputs: workdirs (their latest checkpoint, LoRA merged in; a multi-stage workdir means its last stage) or HF Qwen2
directories (exports, bases); all must share one architecture. The output takes the first model's tokenizer and
prompt format; `workdir_out` also writes a params-only checkpoint there (run/checkpoint.save_params), so that
directory can be evaluated, exported, mined with or trained from (`init_from`) like a training run.

mergekit itself is not used: its Qwen2 architecture definition names Qwen2ForCausalLM tensors (`model.` prefix,
lm_head) while our exports are Qwen2Model trunks, and it reads no Orbax workdirs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.merging import formulas

log = logging.getLogger(__name__)

# ModelConfig fields that do not change what the weights mean (numerics, layout, training choices, export-only).
NOT_ARCHITECTURE = {"param_dtype", "dtype", "scan_layers", "remat_policy", "attention_impl", "frozen_layers",
                    "freeze_embedding", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "initializer_range",
                    "max_position_embeddings", "tie_word_embeddings"}


def load_model(spec: str, *, scan_layers: bool | None = None, flag: str = "--models"):
    """(params, config, prompt, tokenizer dir, source record) of a workdir or an HF directory (`flag` names where
    `spec` came from in errors)."""
    from qzhou_jax.run import checkpoint, meta as run_meta

    if checkpoint.is_workdir(spec) or (os.path.isdir(spec) and not os.path.exists(os.path.join(spec, "config.json"))):
        workdir = run_meta.resolve_workdir(spec)
        params, config, meta = checkpoint.restore_params(workdir)
        params = jax.device_get(params)
        if scan_layers is not None and config.scan_layers != scan_layers:
            params, config = relayout(params, config, scan_layers)
        return params, config, run_meta.prompt_from_meta(meta), run_meta.tokenizer_from_meta(meta, workdir), {
            "workdir": os.path.abspath(workdir), "step": meta.get("step")}
    from qzhou_jax.encode import check_model_dir, prompt_from_dir
    from qzhou_jax.hf.load import load_params
    from qzhou_jax.model import ModelConfig

    check_model_dir(spec, flag)
    config = ModelConfig.from_hf(spec, **({} if scan_layers is None else {"scan_layers": scan_layers}))
    return jax.device_get(load_params(spec, config)), config, prompt_from_dir(spec), spec, {
        "hf_dir": os.path.abspath(spec)}


def relayout(params, config, scan_layers: bool):
    """Scanned (stacked "layers") <-> unscanned ("layers_i") params."""
    if scan_layers:
        layers = [params[f"layers_{i}"] for i in range(config.num_layers)]
        out = {k: v for k, v in params.items() if not k.startswith("layers_")}
        out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        out = {k: v for k, v in params.items() if k != "layers"}
        for i in range(config.num_layers):
            out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: np.asarray(a[i]), params["layers"])
    return out, config.replace(scan_layers=scan_layers)


def architecture(config) -> dict:
    return {k: v for k, v in config.__dict__.items() if k not in NOT_ARCHITECTURE}


def merge_models(method: str, models: Sequence[str], weights: Sequence[float] | None = None, *, base: str | None = None,
                 density: float = 1.0, scale: float = 1.0, normalize: bool = True):
    """(merged params, config, prompt, tokenizer dir, source record) of `models` (workdirs or HF dirs)."""
    first = load_model(models[0])
    scan = first[1].scan_layers
    loaded = [first] + [load_model(m, scan_layers=scan) for m in models[1:]]
    base_model = load_model(base, scan_layers=scan, flag="--base") if base else None
    reference = architecture(first[1])
    for spec, item in zip(list(models[1:]) + ([base] if base else []), loaded[1:] + ([base_model] if base else [])):
        if architecture(item[1]) != reference:
            diff = {k: (reference.get(k), v) for k, v in architecture(item[1]).items() if reference.get(k) != v}
            raise UsageError(f"{spec}: a different architecture than {models[0]}: {diff}")
    stacked = formulas.scanned_layers if scan else (lambda path: False)
    merged = formulas.merge_trees(method, [m[0] for m in loaded], weights, base=base_model[0] if base_model else None,
                                  density=density, scale=scale, normalize=normalize, stacked=stacked)
    config = first[1].replace(param_dtype="float32")
    source = {"merge": {"method": method, "weights": list(weights) if weights is not None else None,
                        "density": density, "scale": scale, "normalize": normalize,
                        "models": [m[4] for m in loaded], "base": base_model[4] if base_model else None}}
    return merged, config, first[2], first[3], source


def write_merged(merged, config, prompt, tokenizer_dir, source, out: str, *, dtype: str = "float32",
                 workdir_out: str | None = None, overwrite: bool = False) -> str:
    """The HF / sentence-transformers export (and optionally a params-only checkpoint workdir)."""
    import jax.numpy as jnp

    from qzhou_jax.hf.export import export_hf
    from qzhou_jax.tokenizer import load_tokenizer

    export_hf(merged, config, out, tokenizer=load_tokenizer(tokenizer_dir), dtype=dtype, prompt=prompt,
              overwrite=overwrite, source=source)
    if workdir_out:
        from qzhou_jax.run import checkpoint
        params = jax.tree.map(jnp.asarray, merged)
        meta = {"model_config": checkpoint.model_config_to_dict(config), "config": {},
                "prompt": {"query_template": prompt.query_template, "sep": prompt.sep},
                "tokenizer": tokenizer_dir, **source}
        checkpoint.save_params(workdir_out, 0, params, meta)
    return out
