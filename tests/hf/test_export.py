"""Flax params -> HF / sentence-transformers directory: PyTorch and ST parity, sharding, round trips, the CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from safetensors.torch import load_file

from qzhou_jax import sharding
from qzhou_jax.encode import Encoder
from qzhou_jax.hf import export as hf_export
from qzhou_jax.hf import modeling_qzhou
from qzhou_jax.hf.export import export_hf, write_weights
from qzhou_jax.hf.load import load_params, weight_files
from qzhou_jax.model import ModelConfig, abstract_params, embed_tokens, hidden_states, init_params
from qzhou_jax.tokenizer import PromptConfig, load_tokenizer, tokenize
from tests import oracle

# Real Qwen2.5 vocabulary (151665 tokens) fits; hidden 32 keeps everything small.
CONFIG = ModelConfig(vocab_size=151680, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=512)
TEXTS = ["hello world", "a much longer text, with several more tokens than the others in this batch!", "x",
         "Stadt, Land, Fluss: 12345"]
INSTRUCTION = "Given a question, retrieve passages that answer it"


def _read_all(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(set(weight_files(str(directory)).values())):
        tensors.update(load_file(file))
    return tensors


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def exported(params, tmp_path_factory):
    return export_hf(params, CONFIG, tmp_path_factory.mktemp("export") / "model", dtype="float32")


@pytest.fixture(scope="module")
def encoder(exported):
    """Our encoder read back from the export (loading the 18 MB tokenizer.json is slow: once per module)."""
    return Encoder.from_pretrained(str(exported), max_length=64, batch_size=4)


# ------------------------------------------------------------------------------------------ transformers (torch)


@pytest.fixture(scope="module")
def torch_model(exported):
    model = transformers.AutoModel.from_pretrained(str(exported), trust_remote_code=True).eval()
    assert type(model).__name__ == "QZhouEmbeddingModel"
    return model


@jax.jit
def _jax_reference(params, ids, mask):
    return hidden_states(params, CONFIG, ids, mask), embed_tokens(params, CONFIG, ids, mask)


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
@pytest.mark.parametrize("side", ["left", "right"])
def test_torch_matches_jax(encoder, params, torch_model, instruction, side):
    texts = [PromptConfig().format_query(t, instruction) for t in TEXTS]
    batch = tokenize(encoder.tokenizer, texts, 64, padding_side=side, pad_to=40)  # one shape: one compile
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        out = torch_model(input_ids=torch.as_tensor(ids).long(), attention_mask=torch.as_tensor(mask).long())
    got = out.last_hidden_state.numpy()
    want, reference = map(np.asarray, _jax_reference(params, ids, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    pooled = oracle.torch_mean_pool(got, mask)  # the oracle's numpy mean pool + L2 norm
    assert _cosine(pooled, reference).min() >= 0.99999
    assert np.abs(pooled - reference).max() <= 1e-4


def test_torch_attention_is_bidirectional(torch_model):
    ids = torch.tensor([[1000, 2000, 3000, 4000], [1000, 2000, 3000, 5000]])
    with torch.no_grad():
        hidden = torch_model(input_ids=ids).last_hidden_state  # no padding: the case sdpa would run causal
    assert (hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-4  # a later token changed the first token's state


def _small_config(attention):
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config.qzhou_attention = attention
    return config


def test_causal_config_behaves_as_stock():
    torch.manual_seed(0)
    config = _small_config("causal")
    ours = modeling_qzhou.QZhouEmbeddingModel(config).eval()
    stock = transformers.Qwen2Model(config).eval()
    stock.load_state_dict(ours.state_dict())
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        b = stock(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(layer.self_attn.is_causal for layer in ours.layers)


def test_mask_fallback_for_older_transformers(monkeypatch):
    """Without masking_utils.create_bidirectional_mask a 4D additive mask must give the same states."""
    torch.manual_seed(0)
    model = modeling_qzhou.QZhouEmbeddingModel(_small_config("bidirectional")).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        monkeypatch.setattr(modeling_qzhou, "create_bidirectional_mask", None)
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_config_json(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_qzhou.QZhouEmbeddingModel"
    assert config["qzhou_attention"] == "bidirectional" and config["is_causal"] is False
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert ModelConfig.from_hf(exported) == CONFIG.replace(head_dim=CONFIG.head_size)


# ------------------------------------------------------------------------------------------ sentence-transformers


@pytest.fixture(scope="module")
def st_model(exported):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")


def test_sentence_transformers_matches_encoder(encoder, st_model):
    # Same token ids: sentence-transformers adds no special tokens either.
    st_ids = st_model.tokenize(["hello world"])["input_ids"][0].tolist()
    assert st_ids == encoder.token_ids(["hello world"])[0]
    assert st_model.max_seq_length == CONFIG.max_position_embeddings  # 8192 capped by the model
    runs = [
        (st_model.encode(TEXTS), encoder.encode(TEXTS)),  # documents: no prompt
        (st_model.encode(TEXTS, prompt_name="query"), encoder.encode(TEXTS, hf_export.DEFAULT_QUERY_INSTRUCTION)),
        (st_model.encode(TEXTS, prompt=hf_export.query_prompt(PromptConfig(), INSTRUCTION)),
         encoder.encode(TEXTS, INSTRUCTION)),
    ]
    for got, want in runs:
        assert _cosine(got, want).min() >= 0.99999
        assert np.abs(got - want).max() <= 1e-4
    # The prompt really changes the embedding (so the comparisons above test it).
    assert np.abs(runs[0][1] - runs[2][1]).max() > 1e-3


def test_sentence_transformers_files(exported):
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_lasttoken"]
    assert pooling["word_embedding_dimension"] == CONFIG.hidden_size
    prompts = json.loads((exported / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == f"Instruct: {hf_export.DEFAULT_QUERY_INSTRUCTION}\nQuery: "
    files = hf_export.sentence_transformers_files(CONFIG.replace(pooling="last"), max_seq_length=8,
                                                  prompt=PromptConfig(sep=""), query_instruction="I")
    assert files["1_Pooling/config.json"]["pooling_mode_lasttoken"]
    assert files["config_sentence_transformers.json"]["prompts"]["query"] == "Instruct: I\nQuery:"
    assert files[hf_export.PROMPT_FILE]["sep"] == ""


def test_encode_query_applies_the_documented_default_prompt(encoder, st_model):
    got, want = st_model.encode_query(TEXTS[:2]), encoder.encode(TEXTS[:2], hf_export.DEFAULT_QUERY_INSTRUCTION)
    assert _cosine(got, want).min() >= 0.99999
    assert _cosine(st_model.encode_document(TEXTS[:2]), encoder.encode(TEXTS[:2])).min() >= 0.99999


def test_tokenizer_files_load_in_transformers_4_and_5(exported):
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 5.x writes "TokenizersBackend", unknown to 4.x
    assert not isinstance(config.get("extra_special_tokens"), list)  # 4.x reads that key as a name -> token dict
    sample = "Instruct: check\nQuery: 短文本 <|im_start|> 123"
    want = load_tokenizer()(sample, add_special_tokens=False)["input_ids"]
    for cls in (transformers.PreTrainedTokenizerFast, transformers.AutoTokenizer):
        tok = cls.from_pretrained(str(exported))
        assert tok(sample)["input_ids"] == want and tok.pad_token == "<|endoftext|>"
    # A transformers 4.x install to try it in (e.g. pip install --target DIR transformers==4.57.1
    # huggingface_hub==0.36.0 tokenizers==0.22.1 --no-deps): QZHOU_TRANSFORMERS4_PATH=DIR.
    old = os.environ.get("QZHOU_TRANSFORMERS4_PATH")
    if old:
        code = ("import sys, json, transformers; assert transformers.__version__.startswith('4.'); "
                "t = transformers.AutoTokenizer.from_pretrained(sys.argv[1]); "
                "print(json.dumps(t(sys.argv[2])['input_ids']))")
        result = subprocess.run([sys.executable, "-c", code, str(exported), sample], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": old}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.strip().splitlines()[-1]) == want


def test_export_records_its_source(params, tmp_path):
    out = export_hf(params, CONFIG, tmp_path / "m", dtype="float32", source={"workdir": "/w", "step": 3})
    assert json.loads((out / hf_export.SOURCE_FILE).read_text()) == {"dtype": "float32", "workdir": "/w", "step": 3}


# ------------------------------------------------------------------------------------------ weights and sharding


def test_sharded_params_export_like_single_device(params, exported, tmp_path):
    mesh = sharding.make_mesh((1, 4, 2))
    abstract, specs = abstract_params(CONFIG)
    placed = jax.device_put(params, sharding.param_shardings(abstract, specs, mesh))
    q = placed["layers"]["self_attn"]["q_proj"]["kernel"]
    assert len({str(s.index) for s in q.addressable_shards}) == 8
    write_weights(placed, CONFIG, tmp_path, dtype="float32")
    _assert_same_tensors(_read_all(tmp_path), _read_all(exported))
    # The collective path (multi-host) gives the same tensors as the local-shard path.
    for layer in (0, 1):
        np.testing.assert_array_equal(hf_export.gather(q, layer), hf_export.fetch(q, layer))
        np.testing.assert_array_equal(hf_export.fetch(q, layer), np.asarray(params["layers"]["self_attn"]
                                                                            ["q_proj"]["kernel"][layer]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forced_shards_reload_exactly(params, tmp_path, dtype):
    config = CONFIG.replace(param_dtype=dtype)
    source = jax.tree.map(lambda x: x.astype(dtype), params)
    limit = 5_000 * np.dtype(dtype).itemsize  # a few tensors per shard; the embedding alone is far larger
    files = write_weights(source, config, tmp_path, dtype=dtype, max_shard_bytes=limit)
    assert len(files) > 3 and not (tmp_path / hf_export.WEIGHTS_NAME).exists()
    index = json.loads((tmp_path / hf_export.INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(files)
    for file in files:  # a shard over the limit holds a single tensor
        tensors = load_file(tmp_path / file)
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= limit or len(tensors) == 1
    reloaded = load_params(str(tmp_path), config)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), reloaded, source)
    assert reloaded["embedding"].dtype == np.dtype(dtype)


@pytest.mark.parametrize("causal_lm", [False, True])
def test_hf_jax_hf_round_trip(tmp_path, causal_lm):
    source = tmp_path / "source"
    oracle.make_hf_model(source, "gqa", vocab_size=CONFIG.vocab_size, causal_lm=causal_lm)
    config = ModelConfig.from_hf(source)
    out = export_hf(load_params(str(source), config), config, tmp_path / "out", dtype="float32")
    original = _read_all(source)
    if causal_lm:
        assert "lm_head.weight" in original
        original = {k.removeprefix("model."): v for k, v in original.items() if k != "lm_head.weight"}
    _assert_same_tensors(_read_all(out), original)
    # Unscanned layers map to the same tensors.
    unscanned = config.replace(scan_layers=False)
    write_weights(load_params(str(out), unscanned), unscanned, tmp_path / "unscanned", dtype="float32")
    _assert_same_tensors(_read_all(tmp_path / "unscanned"), original)


def test_bf16_round_trip(tmp_path):
    source = tmp_path / "source"
    oracle.make_hf_model(source, "mha_tied", vocab_size=CONFIG.vocab_size, dtype=torch.bfloat16)
    config = ModelConfig.from_hf(source)
    write_weights(load_params(str(source), config), config, tmp_path / "out", dtype="bfloat16")
    _assert_same_tensors(_read_all(tmp_path / "out"), _read_all(source))


# ------------------------------------------------------------------------------------------ errors


def test_bad_inputs_named(params, tmp_path, exported):
    with pytest.raises(ValueError, match="float16"):
        export_hf(params, CONFIG, tmp_path / "a", dtype="float16")
    broken = {**params, "layers": {k: v for k, v in params["layers"].items() if k != "mlp"}}
    with pytest.raises(KeyError, match=r"layers/mlp/gate_proj/kernel.*layers\.0\.mlp\.gate_proj\.weight"):
        write_weights(broken, CONFIG, tmp_path, dtype="float32")
    with pytest.raises(ValueError, match=r"layers/input_layernorm/scale: shape \[2, 32\], expected 3 stacked layers"):
        write_weights(params, CONFIG.replace(num_layers=3), tmp_path, dtype="float32")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(params, CONFIG, exported, dtype="float32")
    with pytest.raises(ValueError, match="vocab_size is 300"):
        export_hf(params, CONFIG.replace(vocab_size=300), tmp_path / "b")
    tokenizer = load_tokenizer(None)
    tokenizer.backend_tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A <|im_end|>", special_tokens=[("<|im_end|>", 151645)])
    with pytest.raises(ValueError, match="adds special tokens"):
        export_hf(params, CONFIG, tmp_path / "c", tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_reexports_hf_dir_in_bf16(exported, tmp_path):
    from qzhou_jax.cli import export as cli

    (tmp_path / "src").mkdir()
    for name in ("config.json", "model.safetensors"):  # no tokenizer files: the built-in one is used
        (tmp_path / "src" / name).write_bytes((exported / name).read_bytes())
    (tmp_path / "src" / hf_export.PROMPT_FILE).write_text(json.dumps({"query_template": "Q {instruction}:",
                                                                      "sep": ""}))  # must travel along
    cli.main(["--params-from-hf", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--dtype", "bfloat16"])
    want = {k: v.to(torch.bfloat16) for k, v in _read_all(exported).items()}
    _assert_same_tensors(_read_all(tmp_path / "out"), want)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    prompt = json.loads((tmp_path / "out" / hf_export.PROMPT_FILE).read_text())
    assert (prompt["query_template"], prompt["sep"]) == ("Q {instruction}:", "")
    assert (tmp_path / "out" / "tokenizer.json").exists() and (tmp_path / "out" / "modeling_qzhou.py").exists()


def test_cli_workdir_uses_restore_params(params, tmp_path, monkeypatch):
    from qzhou_jax.cli import export as cli

    calls = []

    def restore_params(workdir, step=None, merge_lora=True):
        calls.append((workdir, step, merge_lora))
        return params, CONFIG, {"prompt": {"query_template": "Do {instruction}:", "sep": " "},
                                "config": {"model": {"tokenizer": "", "hf_dir": ""}}, "step": 7}

    from qzhou_jax.run import checkpoint

    monkeypatch.setattr(checkpoint, "restore_params", restore_params)
    (tmp_path / "wd" / "checkpoints").mkdir(parents=True)
    cli.main(["--workdir", str(tmp_path / "wd"), "--step", "7", "--out", str(tmp_path / "out"), "--dtype", "float32",
              "--max-shard-size", "3e6"])
    assert calls == [(str(tmp_path / "wd"), 7, True)]  # a LoRA run is exported merged
    assert (tmp_path / "out" / hf_export.INDEX_NAME).exists()
    reloaded = load_params(str(tmp_path / "out"), CONFIG)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), reloaded, params)
    assert json.loads((tmp_path / "out" / hf_export.PROMPT_FILE).read_text())["query_template"] == "Do {instruction}:"
