import pytest

from qzhou_jax.data.adapters import ADAPTERS, AdapterOptions, get_adapter, samples_from_rows
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import ClassificationSample, PairScoreSample, RetrievalSample
from qzhou_jax.data.sources import Row
from qzhou_jax.data.transforms import READING_COMPREHENSION_JOINER


def rows(*records):
    return [Row(f"f.jsonl:{i + 1}", r) for i, r in enumerate(records)]


def test_retrieval_flag_embedding_rows():
    out = samples_from_rows(rows({"query": "q", "pos": ["a", "b"], "neg": ["n"], "prompt": "P"}),
                            "retrieval", options=AdapterOptions(instruction="default"))
    assert out == [RetrievalSample("q", "a", ("n",), "P"), RetrievalSample("q", "b", ("n",), "P")]


def test_field_mapping_renames():
    out = samples_from_rows(rows({"title": "T", "abstract": "one two three"}), "title_body",
                            {"body": "abstract"}, AdapterOptions(instruction="I", max_words=2))
    assert out == [RetrievalSample("T", "one two", (), "I")]
    with pytest.raises(ValueError, match=r"transform 'sts' has no fields \['query'\]"):
        get_adapter("sts", {"query": "q"})
    with pytest.raises(ValueError, match="unknown transform 'nope'"):
        get_adapter("nope")


def test_question_answer_and_squad_answers():
    out = samples_from_rows(rows({"question": "q1", "answer": "a1", "negatives": ["w"]},
                                 {"question": "q2", "answer": {"text": ["a2", "a2b"], "answer_start": [0, 1]}}),
                            "question_answer")
    assert out == [RetrievalSample("q1", "a1", ("w",)), RetrievalSample("q2", "a2")]


def test_reading_comprehension_rows():
    out = samples_from_rows(rows({"context": "C.", "question": "Q?", "answer": ["A"]}), "reading_comprehension")
    assert out == [RetrievalSample("C." + READING_COMPREHENSION_JOINER + "Q?", "A")]


def test_claim_evidence_rows():
    out = samples_from_rows(rows({"claim": "c", "supporting": ["s1", "s2"], "refuting": ["r"]}), "claim_evidence")
    assert out == [RetrievalSample("c", "s1", ("r",)), RetrievalSample("c", "s2", ("r",))]


def test_sts_nli_classification_rows():
    assert samples_from_rows(rows({"sentence1": "a", "sentence2": "b", "score": "yes"}), "sts") == [
        PairScoreSample("a", "b", 1.0)]
    assert samples_from_rows(rows({"sentence1": "a", "sentence2": "b", "label": 1}), "nli",
                             options=AdapterOptions(label_names=("entailment", "neutral", "contradiction"))) == [
        PairScoreSample("a", "b", 1.0)]
    assert samples_from_rows(rows({"text": "t", "label": 3}, {"text": "u", "label": "pos"}), "classification") == [
        ClassificationSample("t", "3"), ClassificationSample("u", "pos")]
    assert samples_from_rows(rows({"text": "t", "label": 1}), "classification",
                             options=AdapterOptions(label_names=("neg", "pos"))) == [ClassificationSample("t", "pos")]


BAD = [
    ("retrieval", {"pos": ["p"]}, "f.jsonl:1: field 'query' is missing"),
    ("title_body", {"title": "t", "body": "  "}, "f.jsonl:1: field 'body' is empty"),
    ("question_answer", {"question": "q", "answer": []}, "f.jsonl:1: field 'answer' is empty"),
    ("reading_comprehension", {"context": "c", "question": "q"}, "f.jsonl:1: field 'answer' is missing"),
    ("claim_evidence", {"claim": "c", "supporting": []}, "f.jsonl:1: field 'supporting' is empty"),
    ("sts", {"sentence1": "a", "sentence2": "b", "score": "high"}, "f.jsonl:1: field 'score' has unknown label 'high'"),
    ("nli", {"sentence1": "a", "sentence2": "b", "label": "maybe"}, "f.jsonl:1: field 'label' has unknown label"),
    ("nli", {"sentence1": "a", "sentence2": "b", "label": 5}, "f.jsonl:1: field 'label' has unknown label id 5"),
    ("classification", {"text": "t", "label": ""}, "f.jsonl:1: field 'label' is empty"),
    ("classification", {"label": "x"}, "f.jsonl:1: field 'text' is missing"),
]


@pytest.mark.parametrize("transform, record, message", BAD)
def test_bad_rows_raise_named_errors_or_are_counted(transform, record, message):
    options = AdapterOptions(label_names=("entailment", "neutral", "contradiction")) if transform == "nli" else \
        AdapterOptions()
    with pytest.raises(DataError) as err:
        samples_from_rows(rows(record), transform, options=options)
    assert str(err.value).startswith(message)
    counter = SkipCounter(skip_invalid=True)
    good = {"retrieval": {"query": "q", "pos": "p"}, "title_body": {"title": "t", "body": "b"},
            "question_answer": {"question": "q", "answer": "a"},
            "reading_comprehension": {"context": "c", "question": "q", "answer": "a"},
            "claim_evidence": {"claim": "c", "supporting": ["s"]},
            "sts": {"sentence1": "a", "sentence2": "b", "score": 1}, "nli": {"sentence1": "a", "sentence2": "b",
                                                                            "label": "neutral"},
            "classification": {"text": "t", "label": "x"}}[transform]
    out = samples_from_rows(rows(good, record, good), transform, options=options,
                            invalid=lambda e: counter.invalid("ds", e))
    assert len(out) == 2 and counter.total("ds") == 1
    assert counter.examples["ds"][0].startswith(message.replace("f.jsonl:1", "f.jsonl:2"))


def test_every_adapter_has_instruction_field():
    assert all("instruction" in a.fields for a in ADAPTERS.values())


def test_reading_comprehension_context_truncation():
    out = samples_from_rows(rows({"context": "one two three four", "question": "Q?", "answer": "A"}),
                            "reading_comprehension", options=AdapterOptions(max_words=2))
    assert out[0].query == "one two" + READING_COMPREHENSION_JOINER + "Q?"


def test_flag_embedding_renamed_fields():
    out = samples_from_rows(rows({"q": "x", "positives": ["y"], "hard": ["z"]}), "retrieval",
                            {"query": "q", "pos": "positives", "neg": "hard"}, AdapterOptions(instruction="I"))
    assert out == [RetrievalSample("x", "y", ("z",), "I")]
