"""A dataset refused at load, with the reason, when training on it would be silently wrong.

- with `skip_invalid`, more than `data.max_skipped_fraction` of its rows malformed (110 bad rows of 120 must not
  train on the 10 left);
- no samples left, naming why (e.g. every Parquet row lacked field 'label');
- classification with fewer than two labels (no negative can be drawn);
- pair-score data whose scores are all equal (CoSENT ranks pairs by score: nothing to learn).
"""
from __future__ import annotations

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.formats import CLASSIFICATION, PAIR_SCORE


class DatasetRefused(UsageError):
    pass


def _reasons(counter: SkipCounter, name: str) -> str:
    reasons = counter.counts.get(name, {})
    return "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3)) or "no row was skipped"


def _head(spec) -> str:
    return f"dataset {spec.name!r} ({spec.source}, split {spec.split!r})"


def check_skipped(spec, kept: int, counter: SkipCounter) -> None:
    """Refuses a dataset whose malformed rows exceed data.max_skipped_fraction of its rows (`kept`: the samples
    read). Every path applies it: in-memory loading, `prepare`, and training from a prepared manifest."""
    invalid = counter.invalid_counts.get(spec.name, 0)
    fraction = invalid / (invalid + kept) if invalid else 0.0
    if invalid and fraction > counter.max_skipped_fraction:
        raise DatasetRefused(f"{_head(spec)}: {invalid} malformed rows skipped against {kept} samples kept "
                             f"({fraction:.1%}), above data.max_skipped_fraction = {counter.max_skipped_fraction}: "
                             f"{_reasons(counter, spec.name)}. Fix the data, or raise the limit knowingly")


def check_read(spec, samples: list, counter: SkipCounter) -> None:
    """Raises DatasetRefused for the cases above; `samples` are the dataset's samples as read."""
    head = _head(spec)
    counter.samples_read[spec.name] = len(samples)
    if not samples:
        raise DatasetRefused(f"{head}: no samples left ({_reasons(counter, spec.name)})")
    check_skipped(spec, len(samples), counter)
    if spec.task == CLASSIFICATION:
        labels = sorted({s.label for s in samples})
        if len(labels) < 2:
            raise DatasetRefused(f"{head}: classification needs at least 2 labels, found {labels}")
    if spec.task == PAIR_SCORE:
        scores = {s.score for s in samples}
        if len(scores) == 1:
            raise DatasetRefused(f"{head}: all {len(samples)} pair scores equal {scores.pop()}: CoSENT ranks pairs "
                                 f"by score, so there is nothing to learn")
