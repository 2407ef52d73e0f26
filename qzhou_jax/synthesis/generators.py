"""The three generators: what each asks for, how an answer is checked, and the FlagEmbedding rows it yields.

An item is one input row (query, first positive, negatives, prompt). Each attempt asks for the outputs still
missing; every candidate in the answer is checked (checks.py) against the original and against what this item
already accepted, so retries only ever add new, distinct outputs. All of it is pure: the same answers give the
same accepted outputs, whatever order items complete in.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from qzhou_jax.synthesis import checks, prompts

MALFORMED_JSON, SCHEMA = "malformed_json", "schema"


@dataclasses.dataclass(frozen=True)
class Item:
    index: int            # position in the input file (all rows, not only this shard's)
    source_id: str
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    prompt: str = ""
    upstream: str = ""    # generator that produced the input row, when it is synthetic itself


@dataclasses.dataclass
class Outcome:
    accepted: list            # accepted outputs: tuples, see each generator
    attempts: list[int]       # attempt (1-based) at which each output was accepted
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)


def _candidates(payload, generator: str, fields: Sequence[str]) -> tuple[list[tuple], int]:
    """The well-formed candidates of an answer and how many entries were malformed."""
    entries = payload.get(prompts.LIST_FIELD[generator]) if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        return [], 1
    good, bad = [], 0
    for entry in entries:
        if isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in fields):
            good.append(tuple(entry[f].strip() for f in fields))
        else:
            bad += 1
    return good, bad


class Generator:
    name: str
    fields: tuple[str, ...]

    def avoid(self, item: Item, accepted: list) -> list[str]:
        return [a[0] for a in accepted]

    def messages(self, item: Item, need: int, accepted: list) -> list[dict]:
        return prompts.messages(self.name, item.query, item.positive, need, self.avoid(item, accepted))

    def check(self, item: Item, candidate: tuple, accepted: list) -> str | None:
        raise NotImplementedError

    def usable(self, payload) -> bool:
        """Whether an answer holds at least one well-formed entry (checks may still reject it): a whole wave of
        unusable answers means the server or model cannot do this job, and the run stops (run.py)."""
        return bool(_candidates(payload, self.name, self.fields)[0])

    def accept(self, item: Item, payload, outcome: Outcome, need: int, attempt: int) -> None:
        """Adds the answer's valid candidates (at most `need`) to `outcome`; counts rejections by reason."""
        candidates, malformed = _candidates(payload, self.name, self.fields)
        if malformed:
            outcome.rejected[SCHEMA] = outcome.rejected.get(SCHEMA, 0) + malformed
        taken = 0
        for candidate in candidates:
            if taken == need:
                break
            reason = self.check(item, candidate, outcome.accepted)
            if reason:
                outcome.rejected[reason] = outcome.rejected.get(reason, 0) + 1
                continue
            outcome.accepted.append(candidate)
            outcome.attempts.append(attempt)
            taken += 1

    def provenance(self, item: Item, model: str, attempt: int) -> dict:
        generator = f"{item.upstream}+{self.name}" if item.upstream else self.name
        return {"source_id": item.source_id, "source_index": item.index, "generator": generator, "model": model,
                "attempt": attempt}

    def rows(self, item: Item, outcome: Outcome, model: str) -> list[dict]:
        raise NotImplementedError


class Paraphrase(Generator):
    """accepted: (query, positive). One row per rewrite; the source's negatives are kept (same meaning)."""

    name, fields = "paraphrase", ("query", "positive")

    def check(self, item, candidate, accepted):
        return checks.check_paraphrase(*candidate, item.query, item.positive, accepted)

    def rows(self, item, outcome, model):
        return [{"query": q, "pos": [p], "neg": list(item.negatives), "prompt": item.prompt,
                 **self.provenance(item, model, a)} for (q, p), a in zip(outcome.accepted, outcome.attempts)]


class Augment(Generator):
    """accepted: (query, positive, negative). One row per new sample."""

    name, fields = "augment", ("query", "positive", "negative")

    def check(self, item, candidate, accepted):
        return checks.check_augment(*candidate, item.query, item.positive, accepted)

    def rows(self, item, outcome, model):
        return [{"query": q, "pos": [p], "neg": [n], "prompt": item.prompt, **self.provenance(item, model, a)}
                for (q, p, n), a in zip(outcome.accepted, outcome.attempts)]


class HardNegatives(Generator):
    """accepted: (text, kind). One row per item: the source's negatives, then the generated ones."""

    name, fields = "hard_negatives", ("text", "kind")

    def check(self, item, candidate, accepted):
        text, kind = candidate
        if kind not in prompts.NEGATIVE_KINDS:
            return SCHEMA
        return checks.check_hard_negative(text, item.query, item.positive,
                                          list(item.negatives) + [a[0] for a in accepted])

    def rows(self, item, outcome, model):
        if not outcome.accepted:
            return []
        row = {"query": item.query, "pos": [item.positive],
               "neg": list(item.negatives) + [t for t, _ in outcome.accepted], "prompt": item.prompt,
               **self.provenance(item, model, max(outcome.attempts))}
        row["neg_kinds"] = [k for _, k in outcome.accepted]
        return [row]


GENERATORS = {g.name: g for g in (Paraphrase(), Augment(), HardNegatives())}


def get(name: str) -> Generator:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; expected one of {sorted(GENERATORS)}")
    return GENERATORS[name]


def row_key(row: dict) -> tuple[str, str]:
    """Exact-duplicate key of an output row across the whole output: normalised (query, first positive)."""
    return checks.normalise(row["query"]), checks.normalise(row["pos"][0])
