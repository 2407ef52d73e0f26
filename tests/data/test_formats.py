import pytest

from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import (
    ClassificationTriplet,
    PairScoreSample,
    RetrievalSample,
    as_text,
    flag_embedding_samples,
    get_text_list,
)


def test_flag_embedding_one_sample_per_positive():
    row = {"query": " q ", "pos": ["p1", "p2"], "neg": ["n1", "n2", "n3"], "prompt": "Find it"}
    samples = flag_embedding_samples(row, "f.jsonl:3")
    assert samples == [RetrievalSample("q", "p1", ("n1", "n2", "n3"), "Find it"),
                       RetrievalSample("q", "p2", ("n1", "n2", "n3"), "Find it")]


def test_flag_embedding_defaults_and_prompt_override():
    assert flag_embedding_samples({"query": "q", "pos": "p"}, "w", instruction="I") == [RetrievalSample("q", "p", (), "I")]
    assert flag_embedding_samples({"query": "q", "pos": ["p"], "prompt": ""}, "w", instruction="I")[0].instruction == "I"


@pytest.mark.parametrize("row, message", [
    ({"pos": ["p"]}, "data/x.jsonl:17: field 'query' is missing"),
    ({"query": "", "pos": ["p"]}, "data/x.jsonl:17: field 'query' is empty"),
    ({"query": "q"}, "data/x.jsonl:17: field 'pos' is missing"),
    ({"query": "q", "pos": []}, "data/x.jsonl:17: field 'pos' is empty"),
    ({"query": "q", "pos": ["p", " "]}, "data/x.jsonl:17: field 'pos[1]' is empty"),
    ({"query": 3, "pos": ["p"]}, "data/x.jsonl:17: field 'query' must be a string, got int"),
    ({"query": "q", "pos": ["p"], "neg": 5}, "data/x.jsonl:17: field 'neg' must be a list of strings, got int"),
])
def test_flag_embedding_bad_rows_name_file_line_field(row, message):
    with pytest.raises(DataError) as err:
        flag_embedding_samples(row, "data/x.jsonl:17")
    assert str(err.value) == message
    assert err.value.where == "data/x.jsonl:17"


def test_text_normalisation():
    assert as_text(b"caf\xc3\xa9 ", "f", "w") == "café"
    with pytest.raises(DataError, match="not valid UTF-8"):
        as_text(b"\xff", "f", "w")
    assert get_text_list({"x": "one"}, "x", "w", required=True) == ("one",)


def test_dataclasses_normalise_and_freeze():
    s = RetrievalSample("q", "p", ["n"])
    assert s.negatives == ("n",)
    assert PairScoreSample("a", "b", "3.5").score == 3.5
    with pytest.raises(Exception):
        s.query = "x"
    with pytest.raises(ValueError, match="labels must cover"):
        ClassificationTriplet("t", "p", ("n",), ("a", "a"))


def test_skip_counter_strict_and_counting():
    strict = SkipCounter()
    with pytest.raises(DataError):
        strict.invalid("ds", DataError("f:1", "field 'x' is missing"))
    lenient = SkipCounter(skip_invalid=True)
    lenient.invalid("ds", DataError("f:1", "field 'x' is missing"))
    lenient.invalid("ds", DataError("f:2", "field 'x' is missing"))
    lenient.skip("other", "no consensus label '-'", "g:9")
    assert lenient.total("ds") == 2 and lenient.total() == 3
    assert lenient.counts["ds"]["field 'x' is missing"] == 2
    report = lenient.report()
    assert "ds: 2 rows skipped" in report and "f:1: field 'x' is missing" in report and "other: 1" in report
    merged = SkipCounter()
    merged.absorb(lenient, "all")
    assert merged.total("all") == 3
