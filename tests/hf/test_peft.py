"""LoRA adapters -> a PEFT adapter directory: `peft` loads it on top of the base and gives our embeddings."""
import json

import jax
import numpy as np
import pytest

from qzhou_jax import model as qmodel
from qzhou_jax.hf import peft as hf_peft
from qzhou_jax.hf.load import load_params
from qzhou_jax.model import ModelConfig, lora
from tests import oracle

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _adapted(tmp_path, scan, targets, rank=3, name="gqa"):
    oracle.make_hf_model(tmp_path / "base", name)
    base = ModelConfig.from_hf(tmp_path / "base", scan_layers=scan)
    config = base.replace(lora_rank=rank, lora_alpha=5.0, lora_dropout=0.1, lora_targets=targets)
    params = load_params(str(tmp_path / "base"), base)
    adapters = qmodel.init_adapters(config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    adapters = jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return config, lora.join(params, adapters)


def _ids(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, 9)).astype(np.int32)
    mask = np.ones((3, 9), np.int32)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("scan,targets,name", [
    (True, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "gqa"),
    (False, ("q_proj", "o_proj", "down_proj"), "odd"),
])
def test_peft_loads_our_adapter_and_gives_our_embeddings(tmp_path, scan, targets, name):
    config, params = _adapted(tmp_path, scan, targets, name=name)
    ids, mask = _ids(config.vocab_size)
    ours = np.asarray(qmodel.embed_tokens(params, config, ids, mask))
    hf_peft.write_adapter(params, config, tmp_path / "adapter", base_model=str(tmp_path / "base"))

    saved = json.loads((tmp_path / "adapter" / hf_peft.CONFIG_NAME).read_text())
    assert saved["r"] == 3 and saved["lora_alpha"] == 5.0 and saved["peft_type"] == "LORA"
    base = transformers.AutoModel.from_pretrained(str(tmp_path / "base")).eval()
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    inner = model.base_model.model
    layer = inner.layers[0]
    module = getattr(layer.self_attn, "q_proj")
    assert module.scaling["default"] == pytest.approx(5.0 / 3)
    a = module.lora_A["default"].weight.detach().numpy()
    np.testing.assert_array_equal(a, np.asarray(
        (params["layers"]["self_attn"]["q_proj"]["lora_a"][0] if scan
         else params["layers_0"]["self_attn"]["q_proj"]["lora_a"])).reshape(-1, 3).T)
    for not_targeted in {"k_proj", "v_proj"} - set(targets):
        assert not hasattr(getattr(layer.self_attn, not_targeted), "lora_A")
    theirs = oracle.torch_mean_pool(oracle.torch_hidden(inner, ids, mask, bidirectional=True), mask)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    # ... and the adapter is not a no-op: the base alone differs.
    with model.disable_adapter():
        plain = oracle.torch_mean_pool(oracle.torch_hidden(inner, ids, mask, bidirectional=True), mask)
    assert np.abs(plain - ours).max() > 1e-3


def test_merge_and_unload_gives_our_merged_weights(tmp_path):
    config, params = _adapted(tmp_path, True, ("q_proj", "up_proj"))
    hf_peft.write_adapter(params, config, tmp_path / "adapter")
    base = transformers.AutoModel.from_pretrained(str(tmp_path / "base")).eval()
    merged_torch = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload()
    merged, merged_config = qmodel.merge_lora(params, config)
    from qzhou_jax.hf.export import iter_hf_tensors
    ours = dict(iter_hf_tensors(merged, merged_config, "float32"))
    theirs = {k: v.detach().numpy() for k, v in merged_torch.state_dict().items()}
    assert set(ours) == set(theirs)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-6, err_msg=key)


def test_no_adapters_is_an_error():
    config = qmodel.preset("tiny")
    with pytest.raises(ValueError, match="no LoRA"):
        list(hf_peft.adapter_tensors({}, config))
