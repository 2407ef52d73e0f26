"""The encoder API and CLI: input order, batching independence, parity with the torch oracle, file formats."""
import json

import numpy as np
import pytest

from qzhou_jax.cli.encode import main
from qzhou_jax.encode import Encoder, read_texts
from qzhou_jax.tokenizer import format_query
from tests import oracle
from tests.cli_run import run_main

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


def test_cli_dim_is_the_truncated_renormalised_full_embedding(model_dir, tmp_path):
    directory, _ = model_dir
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    common = ["--model", str(directory), "--input", str(src), "--max-length", "32", "--batch-size", "4"]
    main(common + ["--output", str(tmp_path / "full.npy")])
    main(common + ["--output", str(tmp_path / "d8.npy"), "--dim", "8", "--instruction", "Find"])
    main(common + ["--output", str(tmp_path / "full_i.npy"), "--instruction", "Find"])
    full, full_i, d8 = (np.load(tmp_path / f) for f in ("full.npy", "full_i.npy", "d8.npy"))
    assert full.shape == (len(TEXTS), 32) and d8.shape == (len(TEXTS), 8)
    expected = full_i[:, :8] / np.linalg.norm(full_i[:, :8], axis=-1, keepdims=True)
    np.testing.assert_allclose(d8, expected, atol=1e-6)
    assert not np.allclose(full[:, :8] / np.linalg.norm(full[:, :8], axis=-1, keepdims=True), d8, atol=1e-3)


def test_rows_are_lines_split_on_newline_only(model_dir, tmp_path):
    directory, _ = model_dir
    lines = ["form\x0cfeed", "next\x85line", "line\u2028separator", "windows"]
    src = tmp_path / "odd.txt"
    src.write_bytes(("\n".join(lines[:3]) + "\n" + lines[3] + "\r\n").encode("utf-8"))
    assert read_texts(str(src)) == lines
    main(["--model", str(directory), "--input", str(src), "--output", str(tmp_path / "o.npy"), "--max-length", "32"])
    expected = Encoder.from_pretrained(str(directory), max_length=32).encode(lines)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, atol=1e-6)


def test_empty_and_non_utf8_lines_are_named(model_dir, tmp_path):
    directory, _ = model_dir
    src = tmp_path / "gap.txt"
    src.write_text("first\n\nthird\n")
    with pytest.raises(ValueError, match=r"gap\.txt:2: an empty line"):
        read_texts(str(src))
    out = tmp_path / "gap.npy"
    main(["--model", str(directory), "--input", str(src), "--output", str(out), "--max-length", "32",
          "--empty-lines", "zeros", "--instruction", "Find"])
    emb = np.load(out)
    assert emb.shape[0] == 3 and not emb[1].any()
    expected = Encoder.from_pretrained(str(directory), max_length=32).encode(["first", "third"], "Find")
    np.testing.assert_allclose(emb[[0, 2]], expected, atol=1e-6)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not UTF-8"):
        read_texts(str(bad))
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"text": ""}\n')
    with pytest.raises(ValueError, match=r"e\.jsonl:2: an empty 'text'"):
        read_texts(str(jsonl))


def test_batches_respect_the_token_budget(model_dir, monkeypatch):
    directory, _ = model_dir
    import qzhou_jax.encode as encode_module

    shapes = []
    real = encode_module._embed_batch

    def recording(params, input_ids, attention_mask, config, dim):
        shapes.append(input_ids.shape)
        return real(params, input_ids, attention_mask, config, dim)

    texts = TEXTS + ["word " * 200]  # one long text: 64 tokens after truncation
    reference = Encoder.from_pretrained(str(directory), max_length=64, batch_size=8).encode(texts)
    monkeypatch.setattr(encode_module, "_embed_batch", recording)
    tight = Encoder.from_pretrained(str(directory), max_length=64, batch_size=8, max_batch_tokens=64)
    np.testing.assert_allclose(tight.encode(texts), reference, atol=1e-5)
    assert shapes[0] == (1, 64) and all(rows * length <= 64 for rows, length in shapes)
    assert sum(rows for rows, _ in shapes) >= len(texts)


def test_tokenizer_larger_than_the_vocabulary_and_truncated_tokenizer_files(tmp_path):
    from qzhou_jax.tokenizer import load_tokenizer

    small = tmp_path / "small"
    oracle.make_hf_model(small, "gqa", vocab_size=300, hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match=r"vocabulary \(300\) is smaller than the tokenizer's 151665 tokens"):
        Encoder.from_pretrained(str(small))
    load_tokenizer().save_pretrained(str(small))
    text = (small / "tokenizer.json").read_text()
    (small / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"small/tokenizer\.json:\d+:\d+: invalid JSON.*truncated"):
        load_tokenizer(str(small))


def _cli(argv, capsys):
    """main(argv) as a user runs it: (exit status, stderr)."""
    status, _, err = run_main(main, argv, capsys)
    return status, err


def test_usage_errors_are_one_line_naming_the_flag_or_file(model_dir, tmp_path, capsys):
    directory, _ = model_dir
    src = tmp_path / "texts.txt"
    src.write_text("one\ntwo\n")
    args = ["--input", str(src), "--output", str(tmp_path / "e.npy")]
    for dim in ("0", "33"):  # the tiny model's hidden size is 32
        status, err = _cli(["--model", str(directory), *args, "--dim", dim], capsys)
        assert (status, err) == (2, f"error: --dim {dim}: must be within 1..32 (the hidden size of {directory})\n")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((directory / "config.json").read_text())
    status, err = _cli(["--model", str(tmp_path / "no_weights"), *args], capsys)
    assert status == 2 and err.startswith(f"error: {tmp_path}/no_weights: no model.safetensors") and \
        err.count("\n") == 1
    status, err = _cli(["--model", str(tmp_path), *args], capsys)
    assert (status, err) == (2, f"error: --model {tmp_path}: no config.json there, so it is not an HF Qwen2 "
                                f"directory or a qzhou-jax export\n")
    status, err = _cli(["--model", str(tmp_path / "nowhere"), *args], capsys)
    assert (status, err) == (2, f"error: --model {tmp_path}/nowhere: no such directory\n")
    assert not (tmp_path / "e.npy").exists()
    with pytest.raises(ValueError, match=r"--dim 33: must be within 1..32"):  # --debug: the exception itself
        main(["--model", str(directory), *args, "--dim", "33", "--debug"])
