"""The adapter through the real `mteb` package (test extra) on small tasks built from the shared data: mteb's own
task objects (their metadata, evaluators and result cache) with local data, never the hub. Scores must equal our
evaluate's (STS bit for bit; retrieval to mteb's 5-decimal rounding), and mteb's cache must keep models apart."""
import warnings

import datasets
import pytest

from qzhou_jax.encode import Encoder
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.eval import tasks as qt
from qzhou_jax.eval.mteb_adapter import MTEBEncoder, build_model_meta
from tests import oracle

mteb = pytest.importorskip("mteb")

N_PAIRS, N_QUERIES = 40, 10
TINY = dict(vocab_size=151680, hidden_size=32, intermediate_size=64)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    out = []
    for seed in (0, 1):
        directory = tmp_path_factory.mktemp(f"tiny_{seed}")
        oracle.make_hf_model(directory, "gqa", seed=seed, **TINY)
        out.append(Encoder.from_pretrained(str(directory), max_length=48, batch_size=16))
    return out


def sts_task():
    """mteb's STSBenchmark task holding the same deterministic subset our STSBenchmark task scores."""
    a, b, gold = qt.get_task("STSBenchmark").pairs("test")
    keep = qt.subsample(len(gold), N_PAIRS)
    task = mteb.get_task("STSBenchmark")
    task.dataset = datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {"sentence1": [a[i] for i in keep], "sentence2": [b[i] for i in keep], "score": [float(gold[i]) for i in keep]})})
    task.data_loaded = True
    return task


def scifact_task():
    """mteb's SciFact task with our SciFact subset (same queries, same cut corpus)."""
    ours = qt.get_task("SciFact")
    corpus, queries, qrels = ours.read(ours.splits["test"])
    query_ids = sorted(qrels, key=qt._natural)
    query_ids = [query_ids[i] for i in qt.subsample(len(query_ids), N_QUERIES)]
    judged = {d for q in query_ids for d in qrels[q]}
    others = [d for d in corpus if d not in judged]
    kept = judged | {others[i] for i in qt.subsample(len(others), N_QUERIES * qt.MAX_CORPUS_PER_QUERY - len(judged))}
    doc_ids = [d for d in corpus if d in kept]
    task = mteb.get_task("SciFact")
    task.dataset = {"default": {"test": {
        "corpus": datasets.Dataset.from_dict({"id": doc_ids, "text": [corpus[d] for d in doc_ids]}),
        "queries": datasets.Dataset.from_dict({"id": query_ids, "text": [queries[q] for q in query_ids]}),
        "relevant_docs": {q: dict(qrels[q]) for q in query_ids}, "top_ranked": None}}}
    task.data_loaded = True
    return task


def mteb_score(encoder, task, cache):
    result = mteb.evaluate(MTEBEncoder(encoder), task, cache=cache, show_progress_bar=False,
                           encode_kwargs={"batch_size": 16})
    return result.task_results[0].get_score()


def our_score(encoder, name, max_examples):
    rows = ev.evaluate(encoder, [name], split="test", max_examples=max_examples)
    return next(r["value"] for r in rows if r["metric"] == "main_score")


@pytest.mark.slow
def test_real_mteb_scores_equal_our_evaluate_and_its_cache_keeps_models_apart(encoders, tmp_path):
    a, b = encoders
    cache = mteb.ResultCache(cache_path=str(tmp_path / "mteb_cache"))
    sts_a = mteb_score(a, sts_task(), cache)
    assert sts_a == our_score(a, "STSBenchmark", N_PAIRS)  # bit-identical
    # A second model on the same task and cache gets its own score, not the cached one of the first.
    sts_b = mteb_score(b, sts_task(), cache)
    assert sts_b == our_score(b, "STSBenchmark", N_PAIRS) and sts_b != sts_a
    # Retrieval: queries prompted, documents plain, on both sides of the comparison.
    assert mteb_score(a, scifact_task(), None) == pytest.approx(our_score(a, "SciFact", N_QUERIES), abs=1e-5)


def test_model_meta_names_the_model_and_fingerprints_its_weights(encoders):
    a, b = encoders
    meta_a, meta_b = build_model_meta(a), build_model_meta(b)
    assert meta_a.name == f"qzhou-jax/{a.name}" and meta_a.embed_dim == 32 and meta_a.framework == ["JAX"]
    assert meta_a.revision != meta_b.revision  # same architecture and name pattern, different weights
    assert build_model_meta(a).revision == meta_a.revision  # deterministic
    assert MTEBEncoder(a, model_name="org/x", revision="r1").mteb_model_meta.name == "org/x"
    with pytest.raises(ValueError, match="revision"):
        build_model_meta(type("NoParams", (), {"name": "m"})())


@pytest.mark.parametrize("benchmark", ["MTEB(eng, v2)", "MTEB(cmn, v1)"])
def test_instruction_table_covers_every_task_of_the_benchmarks(benchmark):
    adapter = MTEBEncoder(type("Stub", (), {"encode": lambda self, texts, instruction=None: None})())
    names = []
    for task in mteb.get_benchmark(benchmark).tasks:
        name, task_type = task.metadata.name, task.metadata.type
        assert name in adapter.instructions, f"{benchmark}: no instruction for {name} ({task_type})"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a type fallback would warn
            for side in ("query", "document", None):
                adapter.instruction_for(name, task_type, side)
        names.append(name)
    assert len(names) == {"MTEB(eng, v2)": 41, "MTEB(cmn, v1)": 31}[benchmark]
