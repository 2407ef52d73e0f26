"""Mining input: FlagEmbedding rows and the passage corpus they are mined from.

The corpus is every `pos` and `neg` text of the input rows plus, optionally, a corpus file (JSONL of {"text"}, or
a BEIR corpus.jsonl whose title and text are joined as sources.beir_text does). Texts are de-duplicated by their
normalised form (`normalize`: NFKC, case-folded, whitespace collapsed), keeping the first occurrence, so a
passage that equals a positive after normalisation IS that positive's corpus entry and can never be mined as
a negative of its query. Passages are kept exactly as given (surrounding whitespace included), so a mined
negative equals its corpus entry and can be joined back to it by text. Every bad input names file, line and
field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Sequence

from qzhou_jax.data.formats import get_optional_text, get_text, get_text_list
from qzhou_jax.data.sources import beir_text, read_jsonl

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The duplicate key: NFKC, case-folded, runs of whitespace collapsed, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclasses.dataclass(frozen=True)
class MineRow:
    """One input row: its fields as read (written back with new `neg`), and its texts checked."""

    where: str
    fields: dict
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    prompt: str  # the row's own "prompt", or ""


def read_rows(path: str) -> list[MineRow]:
    """FlagEmbedding rows {"query", "pos": [...], "neg"?: [...], "prompt"?}; errors name path:line and field."""
    rows = []
    for row in read_jsonl(path):  # the data pipeline's reader: malformed JSON / non-UTF-8 name path:line
        record, where = dict(row.fields), row.where
        rows.append(MineRow(where, record, get_text(record, "query", where),
                            get_text_list(record, "pos", where, required=True, strip=False),
                            get_text_list(record, "neg", where, required=False, strip=False),
                            get_optional_text(record, "prompt", where)))
    if not rows:
        raise ValueError(f"{path}: no rows (expected FlagEmbedding JSONL: query, pos, neg)")
    return rows


def read_corpus_file(path: str) -> list[str]:
    """JSONL of {"text"} or BEIR corpus.jsonl ({"_id", "title", "text"}: "title text")."""
    texts = []
    for row in read_jsonl(path):
        record, where = row.fields, row.where
        texts.append(beir_text(record, where) if "title" in record else get_text(record, "text", where, strip=False))
    if not texts:
        raise ValueError(f"{path}: the corpus file has no passages")
    return texts


@dataclasses.dataclass(frozen=True)
class Corpus:
    texts: tuple[str, ...]      # unique by normalised text, first occurrence kept, as given
    index: dict[str, int]       # normalised text -> position in texts

    def __len__(self) -> int:
        return len(self.texts)

    def lookup(self, text: str) -> int:
        return self.index[normalize(text)]

    def model_texts(self) -> list[str]:
        """What the model encodes: the texts stripped, as the training pipeline reads them."""
        return [text.strip() for text in self.texts]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()


def build_corpus(rows: Sequence[MineRow], extra: Sequence[str] = ()) -> Corpus:
    """Positives and negatives of the rows in row order, then the extra passages; normalised duplicates merged."""
    texts, index = [], {}
    for row in rows:
        for text in (*row.positives, *row.negatives):
            _add(text, texts, index)
    for text in extra:
        _add(text, texts, index)
    if not texts:
        raise ValueError("the corpus is empty: the rows have no passages and no corpus file was given")
    return Corpus(tuple(texts), index)


def _add(text: str, texts: list, index: dict) -> None:
    key = normalize(text)
    if key not in index:
        index[key] = len(texts)
        texts.append(text)
