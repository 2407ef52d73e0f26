"""The mining model: an Encoder from an HF directory, an export, or a training workdir (latest checkpoint).

Params go to this process's first local device (the loaders' default; not `jax.devices()[0]`, which belongs to
process 0 when several processes run), so every host can encode its own slice. `model_fingerprint` keys the embedding cache.
"""
from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

from qzhou_jax.run import checkpoint
from qzhou_jax.encode import Encoder
from qzhou_jax.model import ModelConfig
from qzhou_jax.tokenizer import load_tokenizer


def load_encoder(model_dir: str, *, max_length: int = 512, batch_size: int = 32, dtype: str = "float32") -> Encoder:
    if checkpoint.is_workdir(model_dir):
        from qzhou_jax.run import meta as run_meta  # the prompt and tokenizer a run records in its checkpoint meta

        params, config, meta = checkpoint.restore_params(model_dir)
        tokenizer = load_tokenizer(run_meta.tokenizer_from_meta(meta, model_dir))
        config = config.replace(dtype=dtype)  # compute dtype; the params keep the checkpoint's
        return Encoder(params, config, tokenizer, max_length=max_length, batch_size=batch_size,
                       prompt=run_meta.prompt_from_meta(meta))
    from qzhou_jax.encode import prompt_from_dir, check_model_dir
    from qzhou_jax.hf.load import load_params

    check_model_dir(model_dir, "--model")  # neither a workdir nor a model directory: say so, naming it
    config = ModelConfig.from_hf(model_dir, param_dtype=dtype, dtype=dtype)
    params = load_params(model_dir, config)
    return Encoder(params, config, load_tokenizer(model_dir), max_length=max_length, batch_size=batch_size,
                   prompt=prompt_from_dir(model_dir))


def model_fingerprint(encoder: Encoder, samples_per_leaf: int = 4096) -> str:
    """A digest of the model: config, prompt format, length limit and an even sample of every weight tensor
    (hashing all of a 7B model's bytes would take longer than it saves)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(checkpoint.model_config_to_dict(encoder.config), sort_keys=True, default=str).encode())
    digest.update(repr((encoder.prompt, encoder.max_length)).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(encoder.params)[0]:
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        size = int(np.prod(leaf.shape))
        idx = np.linspace(0, size - 1, min(size, samples_per_leaf)).astype(np.int64)
        # The same elements as leaf.reshape(-1)[idx], gathered without reshaping (a reshape of an array sharded
        # over a mesh, e.g. the live training params of mining/refresh.py, would first gather all of it).
        sample = leaf[np.unravel_index(idx, leaf.shape)] if leaf.ndim else leaf
        digest.update(np.asarray(sample, np.float32).reshape(-1).tobytes())
    return digest.hexdigest()
