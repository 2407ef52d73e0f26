"""Keeps benchmarks/encode.py from rotting: toy-size runs end to end (no timing assertions; a random checkpoint, and
a converted Llama directory with --model-dir), and its text loading."""
import gzip
import json

import numpy as np
import pytest

from benchmarks import common
from benchmarks import encode as bench
from qzhou_jax.data.shared_data import DATA_DIR_ENV
from qzhou_jax.hf import convert
from qzhou_jax.tokenizer import load_tokenizer
from tests import oracle

TOY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
       "--texts", "10", "--batch-size", "4", "--max-length", "32", "--repeats", "1", "--threads", "1"]


def write_stsb(root, rows):
    """rows: (split, sentence1, sentence2) in the STS-B file layout."""
    (root / "stsb_en_original").mkdir()
    lines = ["split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2"]
    lines += [f"{split}\tg\td\ty\t{i}\t1.0\t{a}\t{b}" for i, (split, a, b) in enumerate(rows)]
    with gzip.open(root / "stsb_en_original" / "stsbenchmark.tsv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")


def write_scifact(root, docs):
    """A BEIR folder with `docs` [(title, text)] as d0, d1, ..; one query, relevant to d0."""
    folder = root / "scifact"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n"
                                                 for i, (title, text) in enumerate(docs)))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a claim"}) + "\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")


def test_toy_run_agrees_with_pytorch_and_reports_figures(tmp_path, monkeypatch, capsys):
    write_stsb(tmp_path, [("train", f"A man is playing flute number {i}.", f"Someone plays {'a long tune ' * i}.")
                          for i in range(6)])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    summary = bench.main(TOY)

    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert "JAX/PyTorch" in out and "cosine" in out
    assert summary["data"]["source"].startswith("stsb") and summary["data"]["texts"] == 10
    # The PyTorch side is an independent implementation: agreement means both encoded the same tokens the same way.
    assert summary["cosine"]["min"] > 0.9999
    texts, _ = bench.load_texts(10, "stsb")
    tokens = load_tokenizer()(texts, add_special_tokens=False)["input_ids"]
    assert summary["data"]["real_tokens"] == sum(len(t) for t in tokens)
    assert summary["data"]["padded_tokens"] >= summary["data"]["real_tokens"]
    for side in ("jax", "torch"):
        assert summary[side]["texts_per_s"] > 0 and 0 < summary[side]["rss_loaded_mb"] <= summary[side]["peak_rss_mb"]
    assert summary["model"]["params"] > 151665 * 32  # the real vocabulary's embedding table alone
    assert summary["model"]["source"] == "random" and summary["model"]["vocab"] == 151665


def test_model_dir_loads_the_directory_and_its_tokenizer(tmp_path, monkeypatch, capsys):
    """--model-dir: both sides load a real HF directory (a tiny Llama converted to a tied Qwen2) and tokenise with
    its own 300-token tokenizer; the size flags are ignored and the model is described from its config."""
    write_stsb(tmp_path, [("train", f"A man is playing flute number {i}.", f"Someone plays {'a long tune ' * i}.")
                          for i in range(6)])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    oracle.make_llama_model(tmp_path / "llama")
    model_dir = convert.convert(str(tmp_path / "llama"), tmp_path / "qwen2")

    summary = bench.main(TOY + ["--model-dir", str(model_dir)])

    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert "\nqwen2: " in "\n" + out and "vocab 300 tied" in out
    assert summary["cosine"]["min"] > 0.9999
    model = summary["model"]
    assert (model["source"], model["hidden"], model["layers"], model["heads"], model["kv_heads"], model["vocab"],
            model["tied"]) == (str(model_dir), 64, 3, 4, 2, 300, True)
    texts, _ = bench.load_texts(10, "stsb")
    def real_tokens_with(tokenizer):  # truncated at --max-length 32, as both sides do
        return sum(len(t) for t in tokenizer(texts, add_special_tokens=False, truncation=True, max_length=32)[
            "input_ids"])
    assert summary["data"]["real_tokens"] == real_tokens_with(load_tokenizer(model_dir)) \
        != real_tokens_with(load_tokenizer())


def test_load_texts_reads_sources_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    for source in ("stsb", "scifact", "synthetic"):  # nothing there: synthetic, deterministic
        texts, description = bench.load_texts(5, source)
        assert description == "synthetic" and texts == common.synthetic_texts(5) and len(set(texts)) == 5

    # STS-B: both sentences of each train row, in file order, without repeats; other splits left out.
    write_stsb(tmp_path, [("train", "One.", "Two."), ("test", "Unseen.", "Hidden."), ("train", "Two.", "Three.")])
    texts, description = bench.load_texts(5, "stsb")
    assert description.startswith("stsb") and texts == ["One.", "Two.", "Three.", "One.", "Two."]

    # SciFact: the corpus documents as "title text", cycled.
    write_scifact(tmp_path, [("T", "body"), ("", "other"), ("T", "body")])
    texts, description = bench.load_texts(5, "scifact")
    assert description.startswith("scifact") and texts == ["T body", "other", "T body", "other", "T body"]

    # A broken file is an error naming it, never a silent fallback to synthetic text.
    with open(tmp_path / "scifact" / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d9"}) + "\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl:4"):
        bench.load_texts(2, "scifact")
    with pytest.raises(ValueError, match="source must be one of"):
        bench.load_texts(2, "nope")


def test_real_shared_data_is_read_when_present():
    texts, source = bench.load_texts(4, "stsb")
    if source == "synthetic":
        pytest.skip("shared data folder not available")
    assert all(isinstance(t, str) and t.strip() for t in texts) and len(set(texts)) == 4
    assert np.mean([len(t.split()) for t in texts]) > 2
