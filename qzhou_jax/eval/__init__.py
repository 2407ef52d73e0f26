"""Evaluation: MTEB-style metrics, exact chunked cosine search and an mteb encoder adapter.

Everything here is written against the minimal `TextEncoder` protocol below, so that it works with our
JAX `Encoder` (qzhou_jax/encode.py), with a fake in tests, or with any other embedding model.
Importing this package is cheap: it pulls in neither JAX nor mteb (import the submodules for those).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """What evaluation needs from a model: texts in, one embedding row per text out.

    `instruction` is the bare task description (e.g. "Retrieve semantically similar text"); the encoder
    owns the prompt template ("Instruct: {instruction}\\nQuery: {text}", docs/recipe.md section 1) and applies it
    to every text when `instruction` is not None. Returns float32 [len(texts), D], L2-normalised.
    """

    def encode(self, texts: Sequence[str], instruction: str | None = None) -> np.ndarray: ...


__all__ = ["TextEncoder"]
