"""Fixtures for the data tests: a tiny whitespace word-level tokenizer, a JSONL writer, the shared data folder."""
import gzip
import json

import pytest
import tokenizers
import transformers

from qzhou_jax.data.shared_data import data_dir

WORDS = ("Instruct: Query: the a cat dog sat on mat bird flew sky fish swim sea red blue green big small "
         "what is who are where when how why one two three four five six seven eight nine ten").split()


def _tiny_tokenizer(words=WORDS) -> transformers.PreTrainedTokenizerFast:
    """Word-level over whitespace: the ids of a text are [vocab.get(w, UNK) for w in text.split()], which
    tests can compute independently."""
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture
def tokenizer():
    return _tiny_tokenizer()


@pytest.fixture
def write_jsonl():
    def write(path, rows, gz=False):
        opener = gzip.open if gz else open
        with opener(path, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
                f.write("\n")
        return path

    return write


@pytest.fixture(scope="session")
def shared_dir():
    path = data_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"shared data folder {path} absent (set QZHOU_DATA_DIR)")
    return path
