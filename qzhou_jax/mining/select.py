"""Choosing each query's hard negatives from its ranked passages: the rank window, positives and the
false-negative rules, a seeded draw.

Ranks are 1-based positions in the query's full ranking of the corpus, positives included (FlagEmbedding's
`range_for_sampling` convention). The window `start:end` holds ranks start+1 .. end, i.e. the top `start` are
skipped (the paper's "ranks 10-30" is 10:30). A candidate is eligible when it is in the window, is not one of
the query's positives (which, with the corpus de-duplicated by normalised text, also excludes every normalised
duplicate of a positive), is not already a negative of the row, and passes the false-negative rule against the
query's lowest positive score s_pos:
  relative_margin m   keep score <= s_pos - m     (sentence-transformers' relative margin convention)
  max_score_ratio r   keep score <= r * s_pos     (NV-Retriever's TopK-PercPos, e.g. 0.95)
The draw is `numpy.random.default_rng((seed, row_index)).choice(eligible, need, replace=False)`, kept in rank
order: it depends on the row alone, not on batching, devices or hosts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qzhou_jax.cli_errors import UsageError


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    negatives: int = 4
    window: tuple[int, int] = (10, 30)
    relative_margin: float | None = None
    max_score_ratio: float | None = None
    keep_existing: bool = False
    min_positive_rank: int | None = None    # drop queries whose best positive ranks below this
    min_positive_score: float | None = None  # drop queries whose best positive scores below this
    seed: int = 0

    def __post_init__(self):
        start, end = self.window
        if not 0 <= start < end:
            raise UsageError(f"rank window {start}:{end} is empty; expected 0 <= start < end")
        if self.negatives < 0:
            raise UsageError(f"negatives must be >= 0, got {self.negatives}")
        if self.relative_margin is not None and self.max_score_ratio is not None:
            raise UsageError("give one false-negative rule: relative_margin or max_score_ratio, not both")
        if self.min_positive_rank is not None and self.min_positive_rank < 1:
            raise UsageError(f"min_positive_rank must be >= 1, got {self.min_positive_rank}")

    @property
    def depth(self) -> int:
        """How many top passages per query the search must return."""
        return max(self.window[1], self.min_positive_rank or 0)


def parse_window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--range {text!r}: expected START:END, e.g. 10:30") from None
    return start, end


@dataclasses.dataclass(frozen=True)
class Selection:
    negatives: tuple[int, ...]  # corpus indices: kept existing ones first, then mined in rank order
    meta: tuple[dict, ...]      # per negative: rank (1-based, None past the searched depth), score, source
    dropped: str | None = None  # why the row is left out of the output
    short: bool = False         # fewer eligible candidates than slots to fill


def select(row_index: int, ranked: np.ndarray, scores: np.ndarray, positives: Sequence[int],
           positive_scores: Sequence[float], existing: Sequence[int], existing_scores: Sequence[float],
           cfg: SelectConfig) -> Selection:
    """One query. `ranked`/`scores`: its top `cfg.depth` corpus indices and scores, best first."""
    ranked, scores = np.asarray(ranked), np.asarray(scores)
    rank_of = {int(j): r for r, j in enumerate(ranked, start=1)}
    positive_set = set(int(p) for p in positives)
    best_rank = min((rank_of[p] for p in positive_set if p in rank_of), default=None)
    if cfg.min_positive_rank is not None and (best_rank is None or best_rank > cfg.min_positive_rank):
        return Selection((), (), dropped="positive_rank")
    if cfg.min_positive_score is not None and max(positive_scores) < cfg.min_positive_score:
        return Selection((), (), dropped="positive_score")

    kept, meta = [], []
    if cfg.keep_existing:
        for j, s in zip(existing, existing_scores):
            if j not in kept:
                kept.append(int(j))
                meta.append(dict(rank=rank_of.get(int(j)), score=float(s), source="existing"))
    need = max(cfg.negatives - len(kept), 0)
    s_pos = float(min(positive_scores))
    limit = np.inf
    if cfg.relative_margin is not None:
        limit = s_pos - cfg.relative_margin
    elif cfg.max_score_ratio is not None:
        limit = cfg.max_score_ratio * s_pos
    taken = positive_set | set(kept)
    start, end = cfg.window
    eligible = [r for r in range(start, min(end, len(ranked)))
                if int(ranked[r]) not in taken and scores[r] <= limit]
    picks = []
    if need and eligible:
        rng = np.random.default_rng((cfg.seed, row_index))
        picks = sorted(rng.choice(len(eligible), size=min(need, len(eligible)), replace=False).tolist())
    for p in picks:
        r = eligible[p]
        kept.append(int(ranked[r]))
        meta.append(dict(rank=r + 1, score=float(scores[r]), source="mined"))
    return Selection(tuple(kept), tuple(meta), short=len(picks) < need)
