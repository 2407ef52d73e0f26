"""Importing a base model (hf/convert.py): Llama / Mistral directories and GGUF files become Qwen2 directories
whose hidden states equal transformers' own loading of the source, with a tokenizer that adds nothing and pads
with a token of its own."""
import json
import os

import numpy as np
import pytest
import torch
import transformers

from qzhou_jax.hf import convert
from qzhou_jax.cli import convert as convert_cli
from qzhou_jax.hf.load import load_params
from qzhou_jax.model import ModelConfig, hidden_states
from qzhou_jax.tokenizer import load_tokenizer
from tests import oracle

TEXTS = ["the cat sat on the mat", "what is the capital of france? 12345", "a dog"]


def _source_hidden(model, ids, mask):
    with torch.no_grad():
        out = model.model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    return out.last_hidden_state.numpy()


def _batch(tokenizer, texts=TEXTS):
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("mistral", False)])
def test_llama_family_directory_becomes_an_equal_qwen2(tmp_path, arch, tie):
    source = oracle.make_llama_model(tmp_path / "src", arch, tie=tie)
    out = convert.convert(str(tmp_path / "src"), tmp_path / "qwen2")

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is tie
    assert config["rope_theta"] == 50_000.0 and config["rms_norm_eps"] == 1e-5 and config["vocab_size"] == 300
    converted = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(converted, transformers.Qwen2ForCausalLM)
    for name, p in converted.named_parameters():  # Llama has no q/k/v biases: Qwen2's are zero
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            assert not p.any(), name

    tokenizer = load_tokenizer(out)
    ids, mask = _batch(tokenizer)
    want = _source_hidden(source, ids, mask)
    np.testing.assert_allclose(_source_hidden(converted, ids, mask), want, rtol=1e-5, atol=1e-5)
    # Our Flax model reads the converted directory and computes the same (causal) hidden states.
    flax_config = ModelConfig.from_hf(out, attention="causal")
    ours = np.asarray(hidden_states(load_params(str(out), flax_config), flax_config, ids, mask))
    np.testing.assert_allclose(ours * mask[..., None], want * mask[..., None], rtol=1e-4, atol=1e-4)


def test_tokenizer_adds_nothing_and_pads_with_its_own_token(tmp_path):
    oracle.make_llama_model(tmp_path / "src")
    original = transformers.AutoTokenizer.from_pretrained(tmp_path / "src")
    assert original("a dog")["input_ids"][0] == original.bos_token_id  # the source adds BOS
    out = convert.convert(str(tmp_path / "src"), tmp_path / "qwen2")
    for tokenizer in (load_tokenizer(out), transformers.AutoTokenizer.from_pretrained(out)):
        text = "what is the capital of france? 12345"
        assert tokenizer(text)["input_ids"] == original(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.pad_token == "<unk>" and tokenizer.eos_token == "</s>" and tokenizer.bos_token == "<s>"
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    record = json.loads((out / convert.SOURCE_FILE).read_text())
    assert record["source_model_type"] == "llama" and record["tokenizer"]["pad"] == "<unk>"


def test_bf16_directory_keeps_its_dtype_and_shards(tmp_path):
    oracle.make_llama_model(tmp_path / "src", dtype=torch.bfloat16)
    out = convert.convert(str(tmp_path / "src"), tmp_path / "qwen2", max_shard_bytes=20_000)
    index = json.loads((out / convert.INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    from safetensors import safe_open
    file = next(iter(index["weight_map"].values()))
    with safe_open(str(out / file), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.bfloat16, torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ModelConfig.from_hf(out)  # loads as a Qwen2 config
    load_params(str(out), ModelConfig.from_hf(out))


@pytest.mark.parametrize("overrides,match", [
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope scaling"),
])
def test_what_qwen2_cannot_compute_is_refused_by_name(tmp_path, overrides, match):
    oracle.make_llama_model(tmp_path / "src", **overrides)
    with pytest.raises(convert.ConvertError, match=match):
        convert.convert(str(tmp_path / "src"), tmp_path / "qwen2")
    assert not (tmp_path / "qwen2").exists()


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        convert_cli.main(["--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "no such file or directory" in err
    assert "Traceback" not in err and err.count("\n") == 1  # one line, no traceback unless --debug
    with pytest.raises(convert.ConvertError):
        convert_cli.main(["--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--debug"])
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(SystemExit):
        convert_cli.main(["--from", str(tmp_path / "w.bin"), "--out", str(tmp_path / "o")])
    assert "not .gguf" in capsys.readouterr().err
    oracle.make_llama_model(tmp_path / "src")
    convert_cli.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):  # an existing model is not replaced without --overwrite
        convert_cli.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")])
    assert "--overwrite" in capsys.readouterr().err
    convert_cli.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--overwrite"])


# ------------------------------------------------------------------------------------- the real SmolLM2 GGUF
@pytest.mark.slow
def test_smollm2_gguf_hidden_states_equal_transformers_reading_of_the_gguf(smollm2_base):
    gguf = convert.known_base_file("smollm2-135m-instruct")
    source = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                               dtype=torch.float32).eval()
    config = json.loads((smollm2_base / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] and config["rope_theta"] == 100_000.0 and config["rms_norm_eps"] == 1e-5
    tokenizer = load_tokenizer(smollm2_base)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    ids, mask = _batch(tokenizer, ["The capital of France is", "Instruct: Retrieve semantically similar text.\n"
                                   "Query: A man is playing a guitar."])
    want = _source_hidden(source, ids, mask)
    converted = transformers.AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32).eval()
    np.testing.assert_array_equal(_source_hidden(converted, ids, mask), want)
    flax_config = ModelConfig.from_hf(smollm2_base, attention="causal")
    ours = np.asarray(hidden_states(load_params(str(smollm2_base), flax_config), flax_config, ids, mask))
    np.testing.assert_allclose(ours * mask[..., None], want * mask[..., None], rtol=2e-4, atol=2e-4)
