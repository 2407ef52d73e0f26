"""Tokenizer files every client loads alike (hf/tokenizer_files.py): AutoTokenizer with and without
trust_remote_code, and our load_tokenizer, all tokenise as the saved tokenizer.json does, even in a directory whose
config.json says model_type "qwen2" (transformers 5 would otherwise rebuild Qwen's pre-tokeniser)."""
import json

import pytest
import transformers

from qzhou_jax.hf.tokenizer_files import TOKENIZATION_FILE, save_tokenizer
from qzhou_jax.tokenizer import load_tokenizer
from tests import oracle

TEXTS = ["what is the capital of france? 12345", "hello  world\n\nfoo  bar", "the cat sat on 67 mats!"]


@pytest.fixture
def saved(tmp_path):
    tokenizer = oracle.llama_style_tokenizer()
    tokenizer.backend_tokenizer.post_processor = None  # as hf/convert.py leaves it: nothing added
    tokenizer.pad_token = "<unk>"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 300}))
    save_tokenizer(tokenizer, tmp_path, model_max_length=256)
    return tmp_path, tokenizer


@pytest.mark.parametrize("trust_remote_code", [None, False, True])
def test_auto_tokenizer_reads_tokenizer_json_as_saved(saved, trust_remote_code):
    directory, original = saved
    loaded = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == original(text)["input_ids"], text
    assert loaded.model_max_length == 256


def test_without_the_auto_map_transformers_would_tokenise_differently(saved):
    directory, original = saved
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][1] == "tokenization_qzhou.QZhouTokenizer"
    assert (directory / TOKENIZATION_FILE).is_file()
    del config["auto_map"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    rebuilt = transformers.AutoTokenizer.from_pretrained(directory)
    assert any(rebuilt(t)["input_ids"] != original(t)["input_ids"] for t in TEXTS), type(rebuilt).__name__
    ours = load_tokenizer(directory)  # ours reads tokenizer.json directly, auto_map or not
    assert all(ours(t)["input_ids"] == original(t)["input_ids"] for t in TEXTS)
