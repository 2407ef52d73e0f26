"""Transformations from raw task data into the three sample shapes (docs/recipe.md section 2).

Retrieval: `title_body` (also title-abstract), `question_answer`, `reading_comprehension`, `claim_evidence`.
Pair score (CoSENT): `sts` (0-5 float scores, or binary labels true/false, yes/no, 1/0 -> 1.0/0.0),
`nli` (entailment 2, neutral 1, contradiction 0) and `both_directions`.
Classification: `LabelIndex` + `example_based_triplet` draw (positive of the same label, negatives of other
labels) deterministically from a numpy Generator; `example_based_classification` does a whole list per seed.
"""
from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from qzhou_jax.data.errors import DataError
from qzhou_jax.data.formats import (
    ClassificationSample,
    ClassificationTriplet,
    PairScoreSample,
    RetrievalSample,
)

READING_COMPREHENSION_JOINER = "\nRead the passage above and answer the question: "
NLI_SCORES = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
BINARY_LABELS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1": 1.0, "0": 0.0}


def truncate_text(text: str, *, max_chars: int | None = None, max_words: int | None = None) -> str:
    """Keeps the first `max_words` whitespace-separated words, then the first `max_chars` characters.

    Words suit space-separated languages; characters also bound Chinese/Japanese text, which has no spaces.
    """
    if max_words is not None:
        words = text.split()
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def normalize_text(text: str) -> str:
    """The identity of a text for duplicate detection: NFKC, case-folded, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> int:
    """int32 hash of `normalize_text(text)` (blake2b, 4 bytes): equal for texts identical after normalisation;
    two different texts collide with probability 2^-32 (then they are merely not each other's negatives)."""
    digest = hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little", signed=True)


# ---- retrieval ----

def title_body(title: str, body: str, *, instruction: str = "", max_chars: int | None = None,
               max_words: int | None = None) -> RetrievalSample:
    """Title (or paper title) is the query, body (or abstract) the positive, truncated when overlong."""
    return RetrievalSample(title, truncate_text(body, max_chars=max_chars, max_words=max_words), (), instruction)


title_abstract = title_body


def question_answer(question: str, answer: str, *, negatives: Sequence[str] = (),
                    instruction: str = "") -> RetrievalSample:
    """Forum/chat question is the query, its answer the positive; wrong answers may serve as negatives."""
    return RetrievalSample(question, answer, tuple(negatives), instruction)


def reading_comprehension(context: str, question: str, answer: str, *, instruction: str = "",
                          joiner: str = READING_COMPREHENSION_JOINER) -> RetrievalSample:
    """Query = context + fixed "read the passage above" joiner + question; positive = the answer. The joiner and
    question are marked as the query's kept suffix: tokenisation truncates the context, never the question."""
    return RetrievalSample(context + joiner + question, answer, (), instruction, keep_suffix=len(joiner + question))


def claim_evidence(claim: str, supporting: Sequence[str], refuting: Sequence[str] = (), *,
                   instruction: str = "") -> list[RetrievalSample]:
    """FEVER-like: one sample per supporting evidence, the refuting evidence as its hard negatives.

    A claim with no supporting evidence yields no sample (it has no positive).
    """
    return [RetrievalSample(claim, evidence, tuple(refuting), instruction) for evidence in supporting]


# ---- pair score ----

def sts_score(value, where: str = "<input>", field: str = "score",
              score_range: tuple[float, float] = (0.0, 5.0)) -> float:
    """A gold similarity: a number in `score_range`, or a binary label (true/false, yes/no, 1/0) -> 1.0/0.0."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in BINARY_LABELS:
            return BINARY_LABELS[key]
        try:
            value = float(key)
        except ValueError:
            raise DataError(where, f"field {field!r} has unknown label {value!r}; expected a number in "
                                   f"{list(score_range)} or one of {sorted(BINARY_LABELS)}") from None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(where, f"field {field!r} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(score) or not score_range[0] <= score <= score_range[1]:
        raise DataError(where, f"field {field!r} = {score} is outside {list(score_range)}")
    return score


def sts(text_a: str, text_b: str, score, *, instruction: str = "", where: str = "<input>",
        score_range: tuple[float, float] = (0.0, 5.0)) -> PairScoreSample:
    return PairScoreSample(text_a, text_b, sts_score(score, where, score_range=score_range), instruction)


def nli_score(label, where: str = "<input>", field: str = "label") -> float:
    """Entailment -> 2, neutral -> 1, contradiction -> 0 (case-insensitive names; integer ids are refused
    because datasets disagree on their order)."""
    key = label.decode("utf-8", "replace") if isinstance(label, bytes) else label
    if isinstance(key, str) and key.strip().lower() in NLI_SCORES:
        return NLI_SCORES[key.strip().lower()]
    raise DataError(where, f"field {field!r} has unknown label {label!r}; expected one of {sorted(NLI_SCORES)}")


def nli(text_a: str, text_b: str, label, *, instruction: str = "", where: str = "<input>") -> PairScoreSample:
    return PairScoreSample(text_a, text_b, nli_score(label, where), instruction)


def both_directions(samples: Iterable[PairScoreSample]) -> list[PairScoreSample]:
    """Each (a, b, s) followed by (b, a, s), so the CoSENT model learns a symmetric similarity."""
    out = []
    for s in samples:
        out.append(s)
        out.append(PairScoreSample(s.text_b, s.text_a, s.score, s.instruction))
    return out


# ---- example-based classification ----

class LabelIndex:
    """Positions of each label's texts, for drawing same-label positives and other-label negatives in O(k)."""

    def __init__(self, samples: Sequence[ClassificationSample]):
        known = getattr(samples, "labels", None)  # prepared datasets know their labels without reading records
        labels = np.array([s.label for s in samples] if known is None else list(known), dtype=object)
        self.size = len(samples)
        self.members: dict[str, np.ndarray] = {}
        for position, label in enumerate(labels):
            self.members.setdefault(label, []).append(position)
        self.members = {k: np.asarray(v, dtype=np.int64) for k, v in self.members.items()}
        # Rank r of the complement of sorted `m` sits at r + searchsorted(m - arange(len(m)), r, "right").
        self._complement_key = {k: m - np.arange(len(m)) for k, m in self.members.items()}

    def singleton_labels(self) -> list[str]:
        return sorted(label for label, m in self.members.items() if len(m) < 2)

    def draw_positive(self, position: int, label: str, rng: np.random.Generator) -> int:
        members = self.members[label]
        if len(members) < 2:
            raise ValueError(f"label {label!r} has a single text: no positive can be drawn")
        own = int(np.searchsorted(members, position))
        r = int(rng.integers(len(members) - 1))
        return int(members[r + (r >= own)])

    def draw_negatives(self, label: str, k: int, rng: np.random.Generator) -> np.ndarray:
        """Up to k distinct positions uniformly from texts of other labels (all of them when fewer exist)."""
        members = self.members[label]
        pool = self.size - len(members)
        ranks = rng.choice(pool, size=min(k, pool), replace=False)
        return ranks + np.searchsorted(self._complement_key[label], ranks, side="right")


def example_based_triplet(samples: Sequence[ClassificationSample], position: int, index: LabelIndex,
                          rng: np.random.Generator, num_negatives: int) -> ClassificationTriplet:
    """Text `position` with a random other text of its label as positive and `num_negatives` texts of
    other labels as negatives; labels travel along so the loss can mask same-label items."""
    anchor = samples[position]
    positive = samples[index.draw_positive(position, anchor.label, rng)]
    negatives = [samples[int(j)] for j in index.draw_negatives(anchor.label, num_negatives, rng)]
    return ClassificationTriplet(
        anchor.text, positive.text, tuple(n.text for n in negatives),
        (anchor.label, positive.label, *(n.label for n in negatives)), anchor.instruction)


def example_based_classification(samples: Sequence[ClassificationSample], num_negatives: int,
                                 seed: int) -> list[ClassificationTriplet]:
    """All texts materialised once; text i draws from numpy's Generator seeded with (seed, i)."""
    index = LabelIndex(samples)
    if singletons := index.singleton_labels():
        raise ValueError(f"labels with a single text cannot form positives: {singletons}")
    return [example_based_triplet(samples, i, index, np.random.default_rng([seed, i]), num_negatives)
            for i in range(len(samples))]
