"""HF safetensors -> Flax params: names, shapes, dtypes, sharded checkpoints, sharded placement."""
import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qzhou_jax import sharding
from qzhou_jax.hf.load import CheckpointError, load_params
from qzhou_jax.model import ModelConfig, abstract_params, hidden_states
from tests import oracle


def _tensors(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


def _rewrite(directory, tensors):
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def ckpt(tmp_path):
    oracle.make_hf_model(tmp_path, "gqa")
    return tmp_path


def test_missing_tensor_named(ckpt):
    t = _tensors(ckpt)
    del t["layers.1.mlp.up_proj.weight"]
    _rewrite(ckpt, t)
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.mlp\.up_proj\.weight"):
        load_params(str(ckpt), ModelConfig.from_hf(ckpt))


def test_unexpected_tensor_named(ckpt):
    t = _tensors(ckpt)
    t["layers.0.self_attn.rotary.inv_freq"] = torch.zeros(4)
    _rewrite(ckpt, t)
    with pytest.raises(CheckpointError, match=r"unexpected.*rotary\.inv_freq"):
        load_params(str(ckpt), ModelConfig.from_hf(ckpt))


def test_misshaped_tensor_named(ckpt):
    t = _tensors(ckpt)
    t["layers.0.self_attn.k_proj.bias"] = torch.zeros(7)
    _rewrite(ckpt, t)
    with pytest.raises(CheckpointError, match=r"k_proj\.bias.*\[7\].*expected \[32\]"):
        load_params(str(ckpt), ModelConfig.from_hf(ckpt))


def test_bf16_checkpoint_loads_and_casts(tmp_path):
    model = oracle.make_hf_model(tmp_path, "gqa", dtype=torch.bfloat16)
    config = ModelConfig.from_hf(tmp_path)
    params = load_params(str(tmp_path), config)
    assert params["embedding"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(params["embedding"]),
                                  model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy())
    bf16 = load_params(str(tmp_path), config.replace(param_dtype="bfloat16"))
    assert bf16["layers"]["mlp"]["up_proj"]["kernel"].dtype == jax.numpy.bfloat16


@pytest.mark.parametrize("tied", [False, True])
def test_causal_lm_checkpoint_and_sharded_index(tmp_path, tied):
    """A Qwen2ForCausalLM dir ('model.' prefix, lm_head ignored), split into two shards with an index."""
    name = "mha_tied" if tied else "gqa"
    model = oracle.make_hf_model(tmp_path, name, causal_lm=True)
    tensors = _tensors(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for file, names in halves.items():
        save_file({k: tensors[k].contiguous() for k in names}, tmp_path / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in names})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = ModelConfig.from_hf(tmp_path)
    params = load_params(str(tmp_path), config)
    ids = np.array([[3, 4, 5, 6]], np.int32)
    mask = np.ones_like(ids)
    expected = oracle.torch_hidden(model, ids, mask, bidirectional=True)
    np.testing.assert_allclose(np.asarray(hidden_states(params, config, ids, mask)), expected, atol=1e-4)


def test_loads_straight_into_mesh_shardings(ckpt):
    config = ModelConfig.from_hf(ckpt)
    mesh = sharding.make_mesh((1, 4, 2))
    abstract, specs = abstract_params(config)
    shardings = sharding.param_shardings(abstract, specs, mesh)
    params = load_params(str(ckpt), config, shardings)
    reference = load_params(str(ckpt), config)
    q = params["layers"]["self_attn"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert len({str(s.index) for s in q.addressable_shards}) == 8
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, reference)


_RSS_CHILD = r"""
import json, os, sys
import jax
from qzhou_jax.hf.load import load_params
from qzhou_jax.model import ModelConfig

def status():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}

jax.numpy.zeros(1).block_until_ready()  # backend up before the baseline
config = ModelConfig.from_hf(sys.argv[1])
before = status()
params = jax.block_until_ready(load_params(sys.argv[1], config))
after = status()
print(json.dumps(dict(weights=sum(x.nbytes for x in jax.tree.leaves(params)), growth=after["VmRSS"] - before["VmRSS"],
                      peak_growth=after["VmHWM"] - before["VmRSS"])))
"""


def test_resident_memory_after_loading_is_about_the_weights(tmp_path):
    """In a fresh process: the RSS growth of load_params is the weights' size (no mapped pages, no second copy)."""
    import subprocess
    import sys

    oracle.make_hf_model(tmp_path, "gqa", vocab_size=400_000)  # ~100 MB, dominated by one tensor (the embedding)
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["weights"] > 90e6
    assert figures["growth"] < 1.15 * figures["weights"], figures    # was 2x: a mapped copy + device_put copy
    assert figures["peak_growth"] < 2.3 * figures["weights"], figures  # one transient of the largest tensor
