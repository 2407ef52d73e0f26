"""Bad-input reporting: one error type that names file, line and field, and a counter for skipped rows.

Every reader and adapter reports a bad row as `DataError(where, message)`, where `where` is "path:line" (or
"path:row N" / "tfds:name/split[i]" for sources without lines). A `SkipCounter` decides what happens next:
strict (the default) re-raises, `skip_invalid=True` counts the row per dataset and moves on. Rows that are
skipped by design (OCNLI's "-" no-consensus label, TrecQA questions without a correct answer) are always
counted, never raised, so the trainer and the inspect CLI can print where data went.
"""
from __future__ import annotations

import collections
import dataclasses

from qzhou_jax.cli_errors import UsageError


class DataError(UsageError):
    """A bad input row. `str(err)` reads "path:line: field 'query' is missing"."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclasses.dataclass
class SkipCounter:
    """Counts skipped rows per dataset and reason; keeps the first few locations of each for the report."""

    skip_invalid: bool = False
    max_examples: int = 3
    max_skipped_fraction: float = 1.0  # of a dataset's rows skipped as malformed (checks.check_read enforces it)
    counts: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(collections.Counter))
    examples: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    invalid_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    samples_read: dict = dataclasses.field(default_factory=dict)  # per dataset, as checks.check_read saw them

    @classmethod
    def for_data(cls, data) -> "SkipCounter":
        """The counter of a data config (spec.DataConfig): its skip_invalid and max_skipped_fraction, the same rule
        on every path (training, inspect, prepare, mining between stages)."""
        return cls(skip_invalid=data.skip_invalid, max_skipped_fraction=data.max_skipped_fraction)

    def skip(self, dataset: str, reason: str, where: str) -> None:
        """Counts a row skipped by design (never raises)."""
        self.counts[dataset][reason] += 1
        if len(self.examples[dataset]) < self.max_examples:
            self.examples[dataset].append(f"{where}: {reason}")

    def invalid(self, dataset: str, error: DataError) -> None:
        """Handles a malformed row: raise it (strict) or count it under its message (skip_invalid)."""
        if not self.skip_invalid:
            raise error
        self.invalid_counts[dataset] += 1
        self.skip(dataset, error.message, error.where)

    def absorb(self, other: "SkipCounter", dataset: str) -> None:
        """Adds every count of `other` (whatever its dataset keys) under `dataset`."""
        self.invalid_counts[dataset] += sum(other.invalid_counts.values())
        for name, reasons in other.counts.items():
            self.counts[dataset].update(reasons)
            room = self.max_examples - len(self.examples[dataset])
            self.examples[dataset].extend(other.examples[name][:max(room, 0)])

    def add_recorded(self, dataset: str, counts: dict, examples: list, invalid: int = 0) -> None:
        """Counts recorded elsewhere (a prepared dataset's manifest) under `dataset`, for the same report."""
        self.counts[dataset].update(counts)
        self.invalid_counts[dataset] += invalid
        room = self.max_examples - len(self.examples[dataset])
        self.examples[dataset].extend(list(examples)[:max(room, 0)])

    def total(self, dataset: str | None = None) -> int:
        if dataset is not None:
            return sum(self.counts.get(dataset, {}).values())
        return sum(sum(c.values()) for c in self.counts.values())

    def report(self) -> str:
        """Human-readable summary, one block per dataset with skips; "" when nothing was skipped."""
        lines = []
        for dataset in sorted(self.counts):
            if not self.counts[dataset]:
                continue
            lines.append(f"{dataset}: {self.total(dataset)} rows skipped")
            for reason, n in self.counts[dataset].most_common():
                lines.append(f"  {n:>7}  {reason}")
            for example in self.examples[dataset]:
                lines.append(f"    e.g. {example}")
        return "\n".join(lines)
