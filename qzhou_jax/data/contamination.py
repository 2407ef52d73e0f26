"""Evaluation-set contamination: the matcher, and dropping training samples that match.

A text matches when (a) its normalised form (`tokens` joined: NFKC, case-folded, punctuation and whitespace
removed) equals an evaluation text's, or (b) it shares one token 13-gram (NGRAM; tokens: words, CJK characters)
with any evaluation text. Texts shorter than 13 tokens can only match exactly.

This module knows no evaluation task: the texts are passed in, by whoever knows them (`eval.tasks.evaluation_texts`
for the local tasks' non-train splits, files the user names in synthesis/decontam.py). So data, evaluation and
synthesis all use the one matcher without importing each other.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence

NGRAM = 13
CJK_RANGES = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{CJK_RANGES}]|[^\W_{CJK_RANGES}]+", re.UNICODE)

# names -> [(source, texts)]: the evaluation texts of the named tasks ("all" or a comma list)
EvaluationTexts = Callable[[str], Iterable[tuple[str, Sequence[str]]]]


def tokens(text: str) -> list[str]:
    """A CJK character or a run of letters/digits, NFKC case-folded (punctuation and whitespace are not tokens)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    """The exact-match key: NFKC, case-folded, punctuation and whitespace removed."""
    return " ".join(tokens(text))


def _hash(gram: Sequence[str]) -> bytes:
    return hashlib.blake2b("\x1f".join(gram).encode(), digest_size=8).digest()


class Decontaminator:
    def __init__(self, texts: Iterable[str] = (), n: int = NGRAM):
        self.n = n
        self.exact: set[str] = set()
        self.ngrams: set[bytes] = set()
        self.sources: list[str] = []
        self.add(texts)

    def add(self, texts: Iterable[str], source: str | None = None) -> None:
        for text in texts:
            toks = tokens(text)
            if not toks:
                continue
            self.exact.add(" ".join(toks))
            for i in range(len(toks) - self.n + 1):
                self.ngrams.add(_hash(toks[i:i + self.n]))
        if source:
            self.sources.append(source)

    def match(self, text: str) -> str | None:
        """None, or why `text` is contaminated: "exact" or "ngram"."""
        toks = tokens(text)
        if " ".join(toks) in self.exact:
            return "exact"
        if any(_hash(toks[i:i + self.n]) in self.ngrams for i in range(len(toks) - self.n + 1)):
            return "ngram"
        return None

    def match_row(self, row: dict) -> str | None:
        """A FlagEmbedding row is contaminated when its query or any positive matches."""
        for text in [row.get("query", "")] + list(row.get("pos") or []):
            reason = self.match(text)
            if reason:
                return reason
        return None

    def __bool__(self) -> bool:
        return bool(self.exact)


def from_texts(sources: Iterable[tuple[str, Sequence[str]]],
               decontaminator: Decontaminator | None = None) -> Decontaminator:
    """A matcher over (source name, texts) pairs, e.g. `evaluation_texts("all")`."""
    d = decontaminator or Decontaminator()
    for source, texts in sources:
        d.add(texts, source)
    return d


_BUILT: dict[str, Decontaminator] = {}


def sample_texts(sample) -> list[str]:
    """The texts of a training sample that must not be evaluation texts (query + positive; both sides of a pair;
    a classification text)."""
    for fields in (("query", "positive"), ("text_a", "text_b"), ("text",)):
        if all(hasattr(sample, f) for f in fields):
            return [getattr(sample, f) for f in fields]
    raise TypeError(f"no texts known for {type(sample).__name__}")


def drop_contaminated_samples(samples: list, tasks: str, evaluation_texts: EvaluationTexts, counter, dataset: str,
                              where: str) -> list:
    """The data config's `decontaminate` option: samples minus those matching the named tasks' evaluation texts,
    each counted in `counter`."""
    if tasks not in _BUILT:  # one index per task list and process: stage configs repeat datasets
        _BUILT[tasks] = from_texts(evaluation_texts(tasks))
    d = _BUILT[tasks]
    kept = []
    for i, sample in enumerate(samples):
        reason = next((r for r in map(d.match, sample_texts(sample)) if r), None)
        if reason:
            counter.skip(dataset, f"contaminated: {reason} match with an evaluation text", f"{where} sample {i}")
        else:
            kept.append(sample)
    return kept
