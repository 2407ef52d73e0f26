"""LoRA adapters -> a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).

`peft.PeftModel.from_pretrained(base, DIR)` loads it on top of the base model it was trained from, loaded with
`transformers.AutoModel` (the encoder trunk: `Qwen2Model`, or our exports' `QZhouEmbeddingModel` with
`trust_remote_code=True`; sentence-transformers' `model[0].auto_model` is the same module), and gives our
embeddings (tests/hf/test_peft.py). Keys follow peft's saved layout, `base_model.model.<module path>.lora_A.weight`
with module paths `layers.<i>.self_attn.q_proj`, `layers.<i>.mlp.down_proj`, ...; shapes are torch Linear's:
lora_A [r, in_features], lora_B [out_features, r] (model/lora.py's A [*in, r] and B [r, *out], flattened the way
hf/mapping.py flattens the kernels). The config is peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules,
bias "none", no rsLoRA / DoRA, task type FEATURE_EXTRACTION.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from safetensors.numpy import save_file

from qzhou_jax.hf.export import export_dtype, fetch
from qzhou_jax.model.config import ModelConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
MODULE_PARENTS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                  "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def adapter_config(config: ModelConfig, base_model: str | None = None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": base_model,
        "r": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.lora_targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "revision": None,
    }


def adapter_tensors(params, config: ModelConfig, dtype: str = "float32") -> Iterator[tuple[str, np.ndarray]]:
    """(peft key, host array) for every adapter, layer by layer."""
    if not config.lora_rank:
        raise ValueError("the model has no LoRA adapters (model.lora.rank is 0)")
    target = export_dtype(dtype)
    r = config.lora_rank
    for i in range(config.num_layers):
        for name in config.lora_targets:
            parent = MODULE_PARENTS[name]
            node = params["layers"] if config.scan_layers else params[f"layers_{i}"]
            node = node[parent][name]
            layer = i if config.scan_layers else None
            a, b = fetch(node["lora_a"], layer), fetch(node["lora_b"], layer)
            module = f"{PREFIX}layers.{i}.{parent}.{name}"
            yield f"{module}.lora_A.weight", np.ascontiguousarray(a.reshape(-1, r).T.astype(target))
            yield f"{module}.lora_B.weight", np.ascontiguousarray(b.reshape(r, -1).T.astype(target))


def write_adapter(params, config: ModelConfig, out_dir: str | os.PathLike, *, base_model: str | None = None,
                  dtype: str = "float32") -> Path:
    """Writes the PEFT adapter directory of `params` (unmerged: with `lora_a` / `lora_b` leaves); returns it.
    In a multi-process run every process must call this (collective fetches); process 0 writes."""
    out_dir = Path(out_dir)
    tensors = dict(adapter_tensors(params, config, dtype))
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        (out_dir / CONFIG_NAME).write_text(json.dumps(adapter_config(config, base_model), indent=2) + "\n")
        (out_dir / "README.md").write_text(
            "# LoRA adapter (qzhou-jax)\n\n```python\nfrom transformers import AutoModel\nfrom peft import PeftModel\n"
            f"base = AutoModel.from_pretrained({base_model or 'BASE_DIR'!r}, trust_remote_code=True)\n"
            "model = PeftModel.from_pretrained(base, ADAPTER_DIR)  # then mean-pool and L2-normalise\n```\n")
    return out_dir
