"""LossConfig: every loss option in one hashable place, and `loss_config_from` (a dict / ConfigDict -> LossConfig)."""
from __future__ import annotations

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Every loss option in one hashable place (usable as a static jit argument).

    Build from a dict or ml_collections.ConfigDict with `LossConfig(**cfg)`.
    """

    tau: float = 0.02  # InfoNCE temperature (retrieval, classification); paper: 0.02
    cosent_tau: float = 0.02  # CoSENT temperature; the paper does not say if it shares tau (others use 0.05)
    hard_negatives: bool = True  # retrieval: the query's own hard negatives c[i, 1:]
    in_batch_docs: bool = True  # retrieval: every document (positive and negatives) of every other sample
    query_query: bool = True  # retrieval: other queries q_j, j != i
    doc_query: bool = False  # retrieval, GTE extra: s(d_i+, q_j), j != i
    doc_doc: bool = False  # retrieval, GTE extra: s(d_i+, d) over every other document of the batch
    false_negative_margin: float | None = None  # retrieval, Qwen3-Embedding style, e.g. 0.1
    matryoshka_dims: tuple[int, ...] | None = None  # e.g. (128, 256, 512, 1024, 3584); None = full dim only

    def __post_init__(self):
        for name in ("tau", "cosent_tau"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"LossConfig.{name} must be a positive number, got {value!r}")
        for name in ("hard_negatives", "in_batch_docs", "query_query", "doc_query", "doc_doc"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LossConfig.{name} must be a bool, got {getattr(self, name)!r}")
        margin = self.false_negative_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise ValueError(f"LossConfig.false_negative_margin must be a number or None, got {margin!r}")
        dims = self.matryoshka_dims
        if dims is not None:
            # ConfigDicts and YAML hand over lists; a tuple keeps the config hashable.
            dims = tuple(dims)
            if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
                raise ValueError(f"LossConfig.matryoshka_dims must be positive ints, got {self.matryoshka_dims!r}")
            object.__setattr__(self, "matryoshka_dims", dims or None)


def loss_config_from(cfg: Mapping | None) -> LossConfig:
    """LossConfig from a dict / ConfigDict, naming any unknown key (a plain TypeError would not)."""
    cfg = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(LossConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown loss option(s) {unknown}; known: {sorted(known)}")
    return LossConfig(**cfg)
