"""The encoder API and CLI: input order, batching independence, parity with the torch oracle, file formats."""
import json

import numpy as np
import pytest

from qzhou_jax.encode import Encoder, main, read_texts
from qzhou_jax.tokenizer import format_query
from tests import oracle

TEXTS = ["Hello world", "A much longer sentence about contrastive training of embedding models.", "短文本",
         "What is the capital of France?", "x", "Bidirectional attention sees every token."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_qwen")
    torch_model = oracle.make_hf_model(directory, "gqa", vocab_size=151680, hidden_size=32, intermediate_size=64)
    return directory, torch_model


def test_encode_matches_torch_oracle_in_input_order(model_dir):
    directory, torch_model = model_dir
    encoder = Encoder.from_pretrained(str(directory), max_length=64, batch_size=4)
    got = encoder.encode(TEXTS, instruction="Retrieve relevant passages")
    ids = encoder.token_ids(TEXTS, "Retrieve relevant passages")
    for row, text in zip(ids, TEXTS):  # the prompt really went in
        assert encoder.tokenizer.decode(row) == format_query(text, "Retrieve relevant passages")
    for i, row in enumerate(ids):
        hidden = oracle.torch_hidden(torch_model, [row], [[1] * len(row)], bidirectional=True)
        expected = oracle.torch_mean_pool(hidden, [[1] * len(row)])[0]
        assert float(got[i] @ expected) >= 0.99999
        np.testing.assert_allclose(got[i], expected, atol=1e-4)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def test_batch_size_and_padding_side_do_not_change_embeddings(model_dir):
    directory, _ = model_dir
    a = Encoder.from_pretrained(str(directory), max_length=64, batch_size=4).encode(TEXTS)
    b = Encoder.from_pretrained(str(directory), max_length=64, batch_size=1).encode(TEXTS)
    right = Encoder.from_pretrained(str(directory), max_length=64, batch_size=3)
    right.tokenizer.padding_side = "right"
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, right.encode(TEXTS), atol=1e-5)


def test_cli_writes_npy(model_dir, tmp_path):
    directory, _ = model_dir
    src = tmp_path / "texts.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    out = tmp_path / "emb.npy"
    main(["--model", str(directory), "--input", str(src), "--output", str(out), "--max-length", "32",
          "--batch-size", "2", "--dim", "16"])
    emb = np.load(out)
    assert emb.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)


def test_read_texts_formats_and_errors(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("one\ntwo words\n")
    assert read_texts(str(plain)) == ["one", "two words"]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: field 'text'"):
        read_texts(str(bad))
