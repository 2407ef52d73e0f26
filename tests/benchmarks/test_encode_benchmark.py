"""Keeps benchmarks/encode.py from rotting: a toy-size run end to end (no timing assertions), and its text loading."""
import gzip
import json

import numpy as np
import pytest

from benchmarks import encode as bench

TOY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
       "--texts", "10", "--batch-size", "4", "--max-length", "32", "--repeats", "1", "--threads", "1"]


def test_toy_run_agrees_with_pytorch_and_reports_figures(tmp_path, monkeypatch, capsys):
    data = tmp_path / "stsb_en_original"
    data.mkdir()
    rows = ["split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2"]
    rows += [f"train\tg\td\ty\t{i}\t1.0\tA man is playing flute number {i}.\tSomeone plays {'a long tune ' * i}."
             for i in range(6)]
    with gzip.open(data / "stsbenchmark.tsv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    monkeypatch.setenv(bench.DATA_DIR_ENV, str(tmp_path))

    summary = bench.main(TOY)

    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert "JAX/PyTorch" in out and "cosine" in out
    assert summary["data"]["source"].startswith("stsb") and summary["data"]["texts"] == 10
    # The PyTorch side is an independent implementation: agreement means both encoded the same tokens the same way.
    assert summary["cosine"]["min"] > 0.9999
    texts, _ = bench.load_texts(10, "stsb")
    from qzhou_jax.tokenizer import load_tokenizer
    tokens = load_tokenizer()(texts, add_special_tokens=False)["input_ids"]
    assert summary["data"]["real_tokens"] == sum(len(t) for t in tokens)
    assert summary["data"]["padded_tokens"] >= summary["data"]["real_tokens"]
    for side in ("jax", "torch"):
        assert summary[side]["texts_per_s"] > 0 and 0 < summary[side]["rss_loaded_mb"] <= summary[side]["peak_rss_mb"]
    assert summary["model"]["params"] > 151665 * 32  # the real vocabulary's embedding table alone


def test_load_texts_reads_sources_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv(bench.DATA_DIR_ENV, str(tmp_path))
    texts, source = bench.load_texts(5, "stsb")  # nothing there: synthetic, deterministic
    assert source == "synthetic" and texts == bench.synthetic_texts(5) and len(set(texts)) == 5

    (tmp_path / "scifact").mkdir()
    corpus = tmp_path / "scifact" / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "1", "title": "T", "text": "body"}) + "\n\n"
                      + json.dumps({"_id": "2", "title": "", "text": "other"}) + "\n")
    texts, source = bench.load_texts(5, "scifact")
    assert source.startswith("scifact") and texts == ["T body", "other", "T body", "other", "T body"]

    corpus.write_text(json.dumps({"_id": "1", "title": "T", "text": "ok"}) + "\n" + json.dumps({"_id": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: field 'text'"):
        bench.load_texts(2, "scifact")
    (tmp_path / "stsb_en_original").mkdir()
    with gzip.open(tmp_path / "stsb_en_original" / "stsbenchmark.tsv.gz", "wt") as f:
        f.write("header\ntrain\tonly\tfour\tfields\n")
    with pytest.raises(ValueError, match=r"stsbenchmark\.tsv\.gz:2: expected 8"):
        bench.load_texts(2, "stsb")
    with pytest.raises(ValueError, match="source must be one of"):
        bench.load_texts(2, "nope")


def test_real_shared_data_is_read_when_present():
    texts, source = bench.load_texts(4, "stsb")
    if source == "synthetic":
        pytest.skip("shared data folder not available")
    assert all(isinstance(t, str) and t.strip() for t in texts) and len(set(texts)) == 4
    assert np.mean([len(t.split()) for t in texts]) > 2
