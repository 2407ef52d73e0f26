import collections

import numpy as np
import pytest

from qzhou_jax.data import transforms as T
from qzhou_jax.data.errors import DataError
from qzhou_jax.data.formats import ClassificationSample, PairScoreSample, RetrievalSample


def test_truncate_text_words_and_chars():
    assert T.truncate_text("a b c d e", max_words=3) == "a b c"
    assert T.truncate_text("abcdef", max_chars=4) == "abcd"
    assert T.truncate_text("一二三四五", max_chars=2) == "一二"
    assert T.truncate_text("short", max_chars=100, max_words=100) == "short"


def test_title_body_and_abstract():
    s = T.title_body("A title", "word " * 10, max_words=4, instruction="I")
    assert s == RetrievalSample("A title", "word word word word", (), "I")
    assert T.title_abstract("t", "abstract text", max_chars=8).positive == "abstract"


def test_question_answer():
    assert T.question_answer("q?", "a.", negatives=["wrong"]) == RetrievalSample("q?", "a.", ("wrong",))


def test_reading_comprehension_joins_context_and_question():
    s = T.reading_comprehension("The cat sat.", "Who sat?", "The cat")
    assert s.query == "The cat sat.\nRead the passage above and answer the question: Who sat?"
    assert s.positive == "The cat" and s.negatives == ()
    assert T.reading_comprehension("C", "Q", "A", joiner=" || ").query == "C || Q"


def test_claim_evidence():
    out = T.claim_evidence("claim", ["sup1", "sup2"], ["ref1"])
    assert out == [RetrievalSample("claim", "sup1", ("ref1",)), RetrievalSample("claim", "sup2", ("ref1",))]
    assert T.claim_evidence("claim", [], ["ref1"]) == []


@pytest.mark.parametrize("value, expected", [
    ("4.2", 4.2), (3, 3.0), (0.0, 0.0), ("5", 5.0), ("true", 1.0), ("False", 0.0), ("yes", 1.0), ("NO", 0.0),
    ("1", 1.0), ("0", 0.0), (1, 1.0), (True, 1.0), (b"yes", 1.0),
])
def test_sts_scores(value, expected):
    assert T.sts("a", "b", value) == PairScoreSample("a", "b", expected)


@pytest.mark.parametrize("value, message", [
    ("maybe", "field 'score' has unknown label 'maybe'"), (7.5, "outside"), (float("nan"), "outside"),
    (-1, "outside"), (None, "must be a number"),
])
def test_sts_bad_scores(value, message):
    with pytest.raises(DataError, match=message) as err:
        T.sts("a", "b", value, where="f.tsv:4")
    assert str(err.value).startswith("f.tsv:4: ")


def test_nli_scores():
    assert [T.nli("a", "b", label).score for label in ("entailment", "NEUTRAL", " Contradiction ")] == [2.0, 1.0, 0.0]
    with pytest.raises(DataError, match="f.jsonl:2: field 'label' has unknown label 'other'"):
        T.nli("a", "b", "other", where="f.jsonl:2")
    with pytest.raises(DataError):
        T.nli("a", "b", 0, where="x")  # integer ids are ambiguous across datasets


def test_both_directions():
    out = T.both_directions([PairScoreSample("a", "b", 1.5, "I"), PairScoreSample("c", "d", 0.0)])
    assert out == [PairScoreSample("a", "b", 1.5, "I"), PairScoreSample("b", "a", 1.5, "I"),
                   PairScoreSample("c", "d", 0.0), PairScoreSample("d", "c", 0.0)]


def _samples():
    labels = ["x"] * 5 + ["y"] * 3 + ["z"] * 2 + ["w"] * 10
    rng = np.random.default_rng(0)
    rng.shuffle(labels)
    return [ClassificationSample(f"text{i}", label) for i, label in enumerate(labels)]


def test_example_based_classification_properties():
    samples = _samples()
    by_text = {s.text: s for s in samples}
    triplets = T.example_based_classification(samples, num_negatives=4, seed=7)
    assert len(triplets) == len(samples)
    for s, t in zip(samples, triplets):
        assert t.text == s.text
        assert t.positive != s.text and by_text[t.positive].label == s.label
        assert len(t.negatives) == 4 and len(set(t.negatives)) == 4
        assert all(by_text[n].label != s.label for n in t.negatives)
        assert t.labels == (s.label, s.label, *(by_text[n].label for n in t.negatives))


def test_example_based_classification_deterministic_per_seed():
    samples = _samples()
    a = T.example_based_classification(samples, 3, seed=1)
    assert a == T.example_based_classification(samples, 3, seed=1)
    assert a != T.example_based_classification(samples, 3, seed=2)


def test_example_based_draws_are_uniform():
    """Positive uniform over the other same-label texts; negatives uniform over other-label texts."""
    samples = _samples()
    index = T.LabelIndex(samples)
    anchor = next(i for i, s in enumerate(samples) if s.label == "x")
    rng = np.random.default_rng(3)
    positives, negatives = collections.Counter(), collections.Counter()
    n = 4000
    for _ in range(n):
        t = T.example_based_triplet(samples, anchor, index, rng, num_negatives=5)
        positives[t.positive] += 1
        negatives.update(t.negatives)
    same = [s.text for i, s in enumerate(samples) if s.label == "x" and i != anchor]
    other = [s.text for s in samples if s.label != "x"]
    assert set(positives) == set(same) and set(negatives) == set(other)
    for text in same:
        assert abs(positives[text] / n - 1 / len(same)) < 0.03
    for text in other:  # 5 distinct of 15 per draw -> each with probability 1/3
        assert abs(negatives[text] / n - 5 / len(other)) < 0.04


def test_example_based_few_negatives_and_singletons():
    samples = [ClassificationSample("a1", "a"), ClassificationSample("a2", "a"), ClassificationSample("b1", "b")]
    t = T.example_based_triplet(samples, 0, T.LabelIndex(samples), np.random.default_rng(0), num_negatives=4)
    assert t.positive == "a2" and t.negatives == ("b1",) and t.labels == ("a", "a", "b")
    with pytest.raises(ValueError, match=r"single text.*\['b'\]"):
        T.example_based_classification(samples, 2, seed=0)
