"""The paper's synthesis constraints (docs/recipe.md section 4) as pure functions: each returns None or a rejection reason.

One tokenisation serves every measure: a token is a CJK character or a run of letters/digits (punctuation and
whitespace are not tokens), so English is measured in words and Chinese in characters.

  length ratio       len(tokens(new)) / len(tokens(original)), accepted within [1 - tol, 1 + tol]
  edit ratio         token-level Levenshtein distance / max(len(a), len(b)), in [0, 1]; 0 = same wording
  sentence/paragraph a text with more than one sentence (split after . ! ? ; + space, or after 。！？；) is a paragraph
  near-duplicate     edit ratio <= NEAR_DUPLICATE_RATIO, or equal after normalisation
  language           "zh" when CJK characters are at least ZH_SHARE of the tokens, else "en"
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein  # C implementation over token lists; a Python DP is 100x slower

# The one tokenisation, shared with the decontamination matcher (data/contamination.py).
from qzhou_jax.data.contamination import CJK_RANGES, normalise, tokens  # noqa: F401 (normalise: re-exported)

PARAPHRASE_LENGTH_TOL = 0.15
AUGMENT_LENGTH_TOL = 0.20
HARD_NEGATIVE_LENGTH_TOL = 0.20
MIN_EDIT_SENTENCE = 0.30   # paraphrase wording must differ by MORE than this (sentences) ...
MIN_EDIT_PARAGRAPH = 0.20  # ... or this (paragraphs)
NEAR_DUPLICATE_RATIO = 0.10
ZH_SHARE = 0.3

_CJK_CHAR = re.compile(rf"[{CJK_RANGES}]")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])")

# Rejection reasons (summary keys).
EMPTY, LANGUAGE, LENGTH, TOO_SIMILAR, NEAR_DUPLICATE = "empty", "language", "length_ratio", "too_similar", \
    "near_duplicate"
NOT_TOPIC_SHIFT = "not_topic_shift"


def language(text: str) -> str:
    toks = tokens(text)
    if not toks:
        return "en"
    cjk = sum(1 for t in toks if _CJK_CHAR.fullmatch(t))
    return "zh" if cjk / len(toks) >= ZH_SHARE else "en"


def is_paragraph(text: str) -> bool:
    parts = [p for p in _SENTENCE_END.split(text.strip()) if tokens(p)]
    return len(parts) > 1


def edit_ratio(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    ta = tokens(a) if isinstance(a, str) else list(a)
    tb = tokens(b) if isinstance(b, str) else list(b)
    if not ta and not tb:
        return 0.0
    return float(Levenshtein.normalized_distance(ta, tb))


def min_edit_ratio(original: str) -> float:
    return MIN_EDIT_PARAGRAPH if is_paragraph(original) else MIN_EDIT_SENTENCE


# ---- single constraints ----

def check_nonempty(text) -> str | None:
    return None if isinstance(text, str) and tokens(text) else EMPTY


def check_language(text: str, original: str) -> str | None:
    return None if language(text) == language(original) else LANGUAGE


def check_length(text: str, reference: str, tol: float) -> str | None:
    n_ref = max(len(tokens(reference)), 1)
    ratio = len(tokens(text)) / n_ref
    return None if 1 - tol <= ratio <= 1 + tol else LENGTH


def check_rewritten(text: str, original: str, reason: str = TOO_SIMILAR) -> str | None:
    """Wording differs from the original by more than the sentence / paragraph threshold."""
    return None if edit_ratio(text, original) > min_edit_ratio(original) else reason


def near_duplicate(a: str, b: str) -> bool:
    return normalise(a) == normalise(b) or edit_ratio(a, b) <= NEAR_DUPLICATE_RATIO


def check_distinct(text: str, others: Sequence[str]) -> str | None:
    return NEAR_DUPLICATE if any(near_duplicate(text, o) for o in others) else None


def first_failure(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r), None)


# ---- the three generators' acceptance rules ----

def check_paraphrase(query: str, positive: str, orig_query: str, orig_positive: str,
                     accepted: Sequence[tuple[str, str]] = ()) -> str | None:
    """A rewritten (query, positive): same language, length within +-15%, wording changed, new among accepted."""
    for new, orig in ((query, orig_query), (positive, orig_positive)):
        reason = check_nonempty(new) or check_language(new, orig) or \
            check_length(new, orig, PARAPHRASE_LENGTH_TOL) or check_rewritten(new, orig)
        if reason:
            return reason
    return first_failure(check_distinct(query, [q for q, _ in accepted]),
                         check_distinct(positive, [p for _, p in accepted]))


def check_augment(query: str, positive: str, negative: str, orig_query: str, orig_positive: str,
                  accepted: Sequence[tuple[str, str, str]] = ()) -> str | None:
    """A new (query, positive, negative) on a neighbouring topic: same language, not a rewrite of the original
    (differs by more than the paraphrase threshold), positive within +-20% of the original positive, negative
    within +-20% of the new positive and not near-equal to it, new among accepted."""
    for new, orig in ((query, orig_query), (positive, orig_positive), (negative, orig_positive)):
        reason = check_nonempty(new) or check_language(new, orig)
        if reason:
            return reason
    return first_failure(
        check_rewritten(query, orig_query, NOT_TOPIC_SHIFT), check_rewritten(positive, orig_positive, NOT_TOPIC_SHIFT),
        check_length(positive, orig_positive, AUGMENT_LENGTH_TOL),
        check_length(negative, positive, AUGMENT_LENGTH_TOL),
        check_distinct(negative, [positive]),
        check_distinct(query, [a[0] for a in accepted]), check_distinct(positive, [a[1] for a in accepted]))


def check_hard_negative(negative: str, query: str, positive: str, accepted: Sequence[str] = ()) -> str | None:
    """A negative: same language as the positive, length within +-20% of it, not (near-)equal to the positive, the
    query or any accepted negative."""
    return first_failure(check_nonempty(negative)) or first_failure(
        check_language(negative, positive), check_length(negative, positive, HARD_NEGATIVE_LENGTH_TOL),
        check_distinct(negative, [positive, query, *accepted]))
