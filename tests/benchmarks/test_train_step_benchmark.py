"""Keeps benchmarks/train_step.py from rotting: toy-size runs end to end (no timing assertions; a random
checkpoint, and a converted Llama directory with --model-dir, --remat full and --trainable top:1), its torch loss
and remat settings against the project's, and its retrieval batch."""
import json

import jax
import numpy as np
import pytest
import torch

from benchmarks import train_step as bench
from qzhou_jax import losses
from qzhou_jax.batch import Batch
from qzhou_jax.hf import convert
from qzhou_jax.tokenizer import load_tokenizer
from tests import oracle

TOY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64",
       "--batch", "4", "--negatives", "1", "--query-len", "16", "--passage-len", "24", "--steps", "2",
       "--matmul-size", "128", "--matmul-repeats", "2", "--threads", "1", "--profile", "--no-scan-layers"]
QUERIES = ["Aspirin lowers the risk of heart attacks.", "Vitamin D deficiency causes rickets in children.",
           "Exercise improves memory in older adults with mild impairment.", "Coffee prevents liver disease.",
           "Sleep loss impairs glucose tolerance."]


def write_scifact(root, n_queries=len(QUERIES), n_docs=12):
    """A BEIR folder: query i is relevant to doc i; every document is long enough to be truncated."""
    folder = root / "scifact"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for d in range(n_docs):
            words = " ".join(f"finding{d} cohort{w} outcome" for w in range(20))
            f.write(json.dumps({"_id": f"d{d}", "title": f"Study {d}", "text": words}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for q, text in enumerate(QUERIES[:n_queries]):
            f.write(json.dumps({"_id": f"q{q}", "text": text}) + "\n")
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q}\t1\n" for q in range(n_queries)))
    return folder


@pytest.mark.slow  # ~25-40 s: three fresh interpreters (checkpoint writer, torch, JAX) and a JAX compile
def test_toy_run_agrees_with_pytorch_and_reports_figures(tmp_path, monkeypatch, capsys):
    write_scifact(tmp_path)
    monkeypatch.setenv("QZHOU_DATA_DIR", str(tmp_path))

    summary = bench.main(TOY)

    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert "JAX/PyTorch" in out and "MFU" in out
    assert summary["matmul_peak"]["by"].startswith("jax")  # the MFU denominator: JAX's own matmul, same run
    assert (summary["ratio_jax_over_torch"] is None) == summary["oversubscribed"]
    breakdown = summary["jax"]["breakdown"]  # --profile: the step's pieces timed alone
    assert min(breakdown[k] for k in ("forward_s", "loss_and_grads_s", "optimizer_update_s",
                                      "embedding_dense_grad_s")) > 0
    assert breakdown["embedding_mb"] == pytest.approx(151665 * 32 * 4 / 2**20)
    ops = breakdown["top_ops"]  # one traced step: its costliest XLA ops, traced back to the model code
    assert ops and ops[0]["thread_s"] > 0 and all(op["calls"] >= 1 for op in ops)
    assert any("layers" in op["source"] for op in ops) and "costliest XLA ops" in out
    assert summary["data"]["source"].startswith("scifact")
    # Same weights, same batch, same optimizer: the two independent steps agree on every step's loss and gradient
    # norm (after step 1 this also checks that the AdamW updates agree).
    assert len(summary["jax"]["losses"]) == len(summary["torch"]["losses"]) == 3
    np.testing.assert_allclose(summary["jax"]["losses"], summary["torch"]["losses"], rtol=1e-4)
    np.testing.assert_allclose(summary["jax"]["grad_norms"], summary["torch"]["grad_norms"], rtol=1e-4)
    assert summary["jax"]["losses"][2] < summary["jax"]["losses"][0]  # it trains
    # Real tokens, counted independently: the first 4 queries, and 4 x 2 passages all truncated at 24.
    tokenizer = load_tokenizer()
    query_tokens = sum(len(ids) for ids in tokenizer(QUERIES[:4], add_special_tokens=False)["input_ids"])
    assert summary["data"]["query_tokens"] == query_tokens
    assert summary["data"]["passage_tokens"] == 4 * 2 * 24
    assert summary["data"]["padded_tokens"] == 4 * 16 + 4 * 2 * 24
    for side in ("jax", "torch"):
        row = summary[side]
        assert row["step_s"] > 0 and len(row["steps_s"]) == 2
        assert np.isclose(row["tokens_per_s"], (query_tokens + 4 * 2 * 24) / row["step_s"])
        assert np.isclose(row["examples_per_s"], 4 / row["step_s"])
        assert np.isclose(row["mfu"], summary["model_flops_per_step"] / row["step_s"]
                          / summary["matmul_peak"]["best_flops"])
        assert 0 < row["rss_loaded_mb"] <= row["peak_rss_mb"]
    assert summary["jax"]["compile_s"] > 0
    assert summary["model"]["params"] > 151665 * 32  # the real vocabulary's embedding table alone
    # Model FLOPs: 6 x (matmul params) per token + attention, at least the matmul part.
    matmul_params = 32 * 2 * 16 + 2 * 32 * 16 + 2 * 16 * 32 + 3 * 32 * 64
    assert summary["model_flops_per_step"] >= 6 * matmul_params * (query_tokens + 4 * 2 * 24)
    assert summary["model"] == {"source": "random", "params": summary["model"]["params"], "hidden": 32, "layers": 1,
                                "heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate": 64, "vocab": 151665,
                                "tied": False, "dtype": "float32"}
    assert (summary["remat"], summary["trainable"], summary["frozen_layers"]) == ("none", "all", 0)
    assert summary["trainable_params"] == summary["model"]["params"]


@pytest.mark.slow  # ~30-50 s: as above, plus the conversion of a tiny Llama
def test_model_dir_with_remat_and_partial_fine_tuning_agrees_with_pytorch(tmp_path, monkeypatch, capsys):
    """--model-dir: both sides load a real HF directory (a tiny Llama converted to a tied Qwen2 with its own
    300-token tokenizer); --remat full (PyTorch: per-layer gradient checkpointing) and --trainable top:1 (the
    embedding and the bottom 2 of 3 layers frozen on both sides) still give the same losses step by step."""
    write_scifact(tmp_path)
    monkeypatch.setenv("QZHOU_DATA_DIR", str(tmp_path))
    oracle.make_llama_model(tmp_path / "llama")
    model_dir = convert.convert(str(tmp_path / "llama"), tmp_path / "qwen2")
    toy = [a for a in TOY if a not in ("--profile", "--no-scan-layers")]

    summary = bench.main(toy + ["--model-dir", str(model_dir), "--remat", "full", "--trainable", "top:1"])

    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert "\nqwen2: " in "\n" + out and "vocab 300 tied" in out and "frozen" in out
    d, f, h, kv, hd, vocab = 64, 96, 4, 2, 16, 300  # oracle.make_llama_model's sizes; the size flags are ignored
    layer = d * h * hd + h * hd + 2 * (d * kv * hd + kv * hd) + h * hd * d + 3 * d * f + 2 * d
    assert summary["model"] == {"source": str(model_dir), "params": vocab * d + 3 * layer + d, "hidden": d,
                                "layers": 3, "heads": h, "kv_heads": kv, "head_dim": hd, "intermediate": f,
                                "vocab": vocab, "tied": True, "dtype": "float32"}
    assert (summary["remat"], summary["trainable"], summary["frozen_layers"]) == ("full", "top:1", 2)
    assert summary["trainable_params"] == layer + d  # the top layer and the final norm
    np.testing.assert_allclose(summary["jax"]["losses"], summary["torch"]["losses"], rtol=1e-4)
    np.testing.assert_allclose(summary["jax"]["grad_norms"], summary["torch"]["grad_norms"], rtol=1e-4)
    assert summary["jax"]["losses"][2] < summary["jax"]["losses"][0]
    # Tokenised with the directory's own tokenizer (the built-in Qwen2.5 one would give ids past its 300 rows);
    # its small vocabulary splits words finely, so queries are truncated at --query-len 16.
    def query_tokens_with(tokenizer):
        return sum(min(len(ids), 16) for ids in tokenizer(QUERIES[:4], add_special_tokens=False)["input_ids"])
    query_tokens = query_tokens_with(load_tokenizer(model_dir))
    assert summary["data"]["query_tokens"] == query_tokens != query_tokens_with(load_tokenizer())
    # Model FLOPs with 2 of 3 layers frozen: a forward over all 3, a backward over 1: (3 + 2) / 9 of full training.
    tokens = {"anchor": query_tokens, "cand": summary["data"]["passage_tokens"]}
    full = sum(tokens[side] * (6 * (layer - h * hd - 2 * kv * hd - 2 * d) * 3 + 3 * 3 * 4 * length * h * hd)
               for side, length in (("anchor", 16), ("cand", 24)))
    assert summary["model_flops_per_step"] == pytest.approx(full * 5 / 9)


def test_torch_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    """The PyTorch side's remat settings (per-layer checkpointing; selective for dots*) change memory, not math."""
    model = oracle.make_hf_model(tmp_path / "m").train()
    ids = torch.randint(0, 300, (2, 9))

    def grads(remat):
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing_disable()
        if remat != "none":
            model.activation_checkpointing_enable(bench.torch_remat_kwargs(remat))
        assert all(layer.gradient_checkpointing is (remat != "none") for layer in model.layers)
        model(ids, use_cache=False).last_hidden_state.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    want = grads("none")
    for remat in ("full", "dots", "dots_no_batch"):
        got = grads(remat)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"{remat}: {name}")


def test_torch_infonce_matches_the_projects_retrieval_loss():
    rng = np.random.default_rng(0)
    b, c, e = 5, 3, 16
    q = rng.standard_normal((b, e)).astype(np.float32)
    docs = rng.standard_normal((b, c, e)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=-1, keepdims=True)
    valid = np.ones((b, c), bool)
    valid[::2, -1] = False
    for tau in (0.02, 0.5):
        expected, _ = losses.retrieval_infonce(jax.numpy.asarray(q), jax.numpy.asarray(docs), Batch(cand_valid=valid),
                                               losses.LossConfig(tau=tau))
        got = bench.torch_retrieval_infonce(torch.from_numpy(q), torch.from_numpy(docs), torch.from_numpy(valid),
                                            tau=tau)
        np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_retrieval_batch_from_scifact(tmp_path, monkeypatch):
    monkeypatch.setenv("QZHOU_DATA_DIR", str(tmp_path))
    samples, source = bench.retrieval_texts(3, 2)  # no folder: synthetic, deterministic
    assert source == "synthetic" and samples == bench.retrieval_texts(3, 2)[0]
    assert all(len(negs) == 2 for _, _, negs in samples)

    write_scifact(tmp_path)
    samples, source = bench.retrieval_texts(4, 3, seed=1)
    assert source.startswith("scifact") and samples == bench.retrieval_texts(4, 3, seed=1)[0]
    assert [s[0] for s in samples] == QUERIES[:4]
    for i, (_, positive, negatives) in enumerate(samples):
        assert positive.startswith(f"Study {i} ")
        assert len(set(negatives)) == 3 and positive not in negatives
    with pytest.raises(ValueError, match="only 5 queries"):
        bench.retrieval_texts(6, 1)

    batch = bench.make_batch(samples, 16, 24)
    assert batch["anchor_ids"].shape == (4, 16) and batch["cand_ids"].shape == (4, 4, 24)
    assert batch["cand_valid"].all() and batch["cand_mask"].all()  # every passage is truncated, none padded
    tokenizer = load_tokenizer()
    ids = tokenizer(samples[2][2][1], add_special_tokens=False)["input_ids"][:24]
    np.testing.assert_array_equal(batch["cand_ids"][2, 2], ids)  # sample 2's second negative
    q_ids = tokenizer(QUERIES[1], add_special_tokens=False)["input_ids"]
    assert batch["anchor_mask"][1].sum() == len(q_ids)
    np.testing.assert_array_equal(batch["anchor_ids"][1][batch["anchor_mask"][1] == 1], q_ids)
