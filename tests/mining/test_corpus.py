"""Corpus building and input checking: de-duplication by normalised text, errors naming file:line:field."""
import json

import pytest

from qzhou_jax.data.errors import DataError
from qzhou_jax.mining.corpus import build_corpus, normalize, read_corpus_file, read_rows


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_normalised_duplicates_merge_first_occurrence_kept(tmp_path):
    rows = read_rows(_write(tmp_path / "in.jsonl", [json.dumps(dict(query="q", pos=["Hello  World"], neg=["x"]))]))
    corpus = build_corpus(rows, ["hello world", " HELLO\tworld ", "\uff48ello world", "other", "x"])
    assert corpus.texts == ("Hello  World", "x", "other")
    assert corpus.lookup("HELLO WORLD") == 0
    assert normalize("\uff21  b\n") == "a b"


def test_texts_are_kept_as_given(tmp_path):
    """A mined negative must equal its corpus entry, surrounding whitespace included (issue 23, point 7);
    the model still reads the texts stripped, as training does."""
    rows = read_rows(_write(tmp_path / "in.jsonl", [json.dumps(dict(query="q", pos=[" p \n"], neg=["\tn"]))]))
    extra = read_corpus_file(_write(tmp_path / "corpus.jsonl", [json.dumps({"text": "  c  "})]))
    corpus = build_corpus(rows, extra)
    assert corpus.texts == (" p \n", "\tn", "  c  ")
    assert corpus.model_texts() == ["p", "n", "c"]


def test_beir_corpus_joins_title_and_text(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"_id": "1", "title": "T", "text": "body"}),
                                              json.dumps({"_id": "2", "title": "", "text": "only"}),
                                              json.dumps({"text": "plain"})])
    assert read_corpus_file(path) == ["T body", "only", "plain"]


@pytest.mark.parametrize("line, message", [
    (json.dumps(dict(query="q")), "in.jsonl:2: field 'pos' is missing"),
    (json.dumps(dict(query="q", pos=[])), "in.jsonl:2: field 'pos' is empty"),
    (json.dumps(dict(pos=["p"])), "in.jsonl:2: field 'query' is missing"),
    (json.dumps(dict(query="q", pos=["p"], neg=[3])), "in.jsonl:2: field 'neg[0]' must be a string"),
    ("{not json", "in.jsonl:2: malformed JSON"),
    ("[1, 2]", "in.jsonl:2: expected a JSON object"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "in.jsonl", [json.dumps(dict(query="ok", pos=["fine"])), line])
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_rows(path)


def test_empty_inputs_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        read_rows(_write(tmp_path / "in.jsonl", [""]))
    with pytest.raises(ValueError, match="corpus file has no passages"):
        read_corpus_file(_write(tmp_path / "c.jsonl", [""]))
    with pytest.raises(DataError, match="c2.jsonl:1: field 'text' is missing"):
        read_corpus_file(_write(tmp_path / "c2.jsonl", [json.dumps({"body": "x"})]))
    with pytest.raises(ValueError, match="corpus is empty"):
        build_corpus([], [])
