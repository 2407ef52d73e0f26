"""Our `TextEncoder` behind the `mteb` package's encoder protocol, with QZhou's instruction rules.

mteb is an optional extra (`pip install qzhou-jax[mteb]`) and is never imported here: the adapter is duck
typed against both call styles mteb has used.
  v2 (mteb >= 2.0, models_protocols.EncoderProtocol):
      encode(inputs: DataLoader[BatchedInput], *, task_metadata, hf_split, hf_subset, prompt_type=None, **kw)
      inputs yields batches {"text": [str, ...], ...}; task_metadata has .name and .type.
  v1 (mteb 1.x; QZhou's published scores used mteb 1.38.30):
      encode(sentences: list[str], task_name=..., prompt_type=..., **kw)
prompt_type is mteb's PromptType enum (or its value): "query", "document" (v2) / "passage" (v1), or None
for symmetric tasks, which mteb encodes without a side.

Instruction rules (QZhou's run_mteb_all_v2.py / run_cmteb_all.py, docs/recipe.md section 1): the instruction is
looked up by task name. Queries always get it. Documents get it only for symmetric tasks: task types STS,
PairClassification, Classification, Clustering, Reranking, Summarization, plus tasks QZhou listed by name
(e.g. ArguAna and the CQADupstack retrieval tasks), so for Retrieval only the query side is prompted.
The instruction is handed to the encoder as `instruction=`; the encoder owns the template.

mteb caches results by (model name, revision). Without a ModelMeta every model lands under one "no_model_name"
entry and a second model silently gets the first one's cached scores, so `mteb_model_meta` always gives one:
name "qzhou-jax/<model name>" and revision = a fingerprint of the weights (sha256 over every parameter), unless
the caller passes its own. Instruction texts live in `qzhou_jax.instructions` (one table for training and eval).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from qzhou_jax.eval import TextEncoder

from qzhou_jax.instructions import DEFAULT_INSTRUCTIONS, LOCAL_INSTRUCTIONS, QZHOU_INSTRUCTIONS  # noqa: F401
from qzhou_jax.instructions import STS as _STS, WEB_SEARCH as _WEB

# Tasks QZhou prompts on both sides (query_passage_instruction in both scripts). Every symmetric-type
# task in it is also covered by SYMMETRIC_TASK_TYPES; the retrieval ones are the reason the set exists.
QZHOU_BOTH_SIDES_TASKS = frozenset({
    "AmazonCounterfactualClassification", "ArXivHierarchicalClusteringP2P", "ArXivHierarchicalClusteringS2S",
    "BIOSSES", "Banking77Classification", "BiorxivClusteringP2P.v2", "ImdbClassification",
    "MTOPDomainClassification", "MassiveIntentClassification", "MassiveScenarioClassification",
    "MedrxivClusteringP2P", "MedrxivClusteringS2S", "MedrxivClusteringP2P.v2", "MedrxivClusteringS2S.v2", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS17",
    "STS22.v2", "STSBenchmark", "SprintDuplicateQuestions", "StackExchangeClustering.v2",
    "StackExchangeClusteringP2P.v2", "ToxicConversationsClassification", "TweetSentimentExtractionClassification",
    "TwentyNewsgroupsClustering.v2", "TwitterSemEval2015", "TwitterURLCorpus", "AskUbuntuDupQuestions",
    "MindSmallReranking", "CQADupstackGamingRetrieval", "CQADupstackUnixRetrieval", "ArguAna",
    "SummEvalSummarization.v2",
    "AFQMC", "ATEC", "BQ", "LCQMC", "STSB", "QBQTC", "PAWSX", "CLSClusteringP2P", "CLSClusteringS2S",
    "ThuNewsClusteringS2S", "ThuNewsClusteringP2P", "Cmnli", "Ocnli", "IFlyTek", "JDReview",
    "MultilingualSentiment", "OnlineShopping", "Waimai", "TNews", "MMarcoReranking", "CMedQAv1-reranking",
    "CMedQAv2-reranking", "T2Reranking",
})

SYMMETRIC_TASK_TYPES = frozenset({
    "STS", "PairClassification", "Classification", "MultilabelClassification", "Clustering", "Reranking",
    "Summarization",
})

# Types of the ten local tasks, for v1-style calls (task name only).
LOCAL_TASK_TYPES: dict[str, str] = {
    "STSBenchmark": "STS", "SICK-R": "STS", "ATEC": "STS", "LCQMC": "STS", "Ocnli": "PairClassification",
    "SciFact": "Retrieval", "Banking77Classification": "Classification", "TRECClassification": "Classification",
    "SST2Classification": "Classification", "Waimai": "Classification",
}

# Fallback for tasks missing from the table, by type (with a warning); other types must be listed.
TYPE_FALLBACK_INSTRUCTIONS: dict[str, str] = {
    "STS": _STS, "PairClassification": _STS, "Retrieval": _WEB, "Reranking": _WEB,
}

_QUERY, _DOCUMENT = "query", "document"


def load_instructions(path: str | Path) -> dict[str, str | None]:
    """Read a JSON object {task name: instruction}; null switches a task's instruction off."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object {{task name: instruction}}, got {type(table).__name__}")
    for task, instruction in table.items():
        if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
            raise ValueError(f"{path}: task {task!r}: instruction must be a non-empty string or null, "
                             f"got {instruction!r}")
    return table


def _side(prompt_type: Any) -> str | None:
    """mteb's PromptType (enum or value) -> "query", "document" or None."""
    if prompt_type is None:
        return None
    value = getattr(prompt_type, "value", prompt_type)
    if value == _QUERY:
        return _QUERY
    if value in (_DOCUMENT, "passage"):
        return _DOCUMENT
    raise ValueError(f"unknown prompt_type {prompt_type!r}: expected query, document/passage or None")


def _texts(inputs: Any) -> list[str]:
    """Flatten mteb inputs: a list of strings (v1) or an iterable of {"text": [...]} batches (v2)."""
    if isinstance(inputs, (str, bytes)):
        raise TypeError("encode() got a single string; pass a list of texts or a DataLoader of batches")
    texts: list[str] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping):
            if "text" not in item:
                raise KeyError(f"input batch {i} has no 'text' field (fields: {sorted(item)})")
            batch = item["text"]
            texts.extend([batch] if isinstance(batch, str) else list(batch))
        else:
            raise TypeError(f"input item {i} is a {type(item).__name__}; expected a str or a {{'text': [...]}} batch")
    bad = [j for j, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text {bad[0]} is a {type(texts[bad[0]]).__name__}, not a str")
    return texts


class MTEBEncoder:
    """mteb encoder (v1 and v2 protocols) around a `TextEncoder`.

    encoder: anything with encode(texts, instruction=None) -> [N, D] array.
    instructions: task name -> instruction (None disables it); defaults to DEFAULT_INSTRUCTIONS, and
        `instructions_file` (JSON, see load_instructions) is applied on top.
    both_sides_tasks / symmetric_task_types: which tasks prompt documents too (QZhou's rules by default).
    task_types: task name -> mteb task type, used when mteb only passes a task name (v1).
    use_instruction: False encodes every text plain (QZhou's --use_instruction false).
    encode_kwargs: extra keyword arguments for encoder.encode (e.g. batch_size); mteb's own encode kwargs
        (batch_size, show_progress_bar, ...) are not forwarded, so the encoder keeps its configured setup.
    model_name / revision: of the ModelMeta that `mteb_model_meta` builds (see the module docstring); name
        default: the encoder's `name`; revision default: `weights_fingerprint(encoder.params)`.
    model_meta: an mteb ModelMeta to return as it is instead.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        instructions: Mapping[str, str | None] | None = None,
        *,
        instructions_file: str | Path | None = None,
        both_sides_tasks: Iterable[str] = QZHOU_BOTH_SIDES_TASKS,
        symmetric_task_types: Iterable[str] = SYMMETRIC_TASK_TYPES,
        task_types: Mapping[str, str] | None = None,
        use_instruction: bool = True,
        encode_kwargs: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        revision: str | None = None,
        model_meta: Any = None,
    ):
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(f"{type(encoder).__name__} has no encode(texts, instruction=None) method")
        self.encoder = encoder
        self.instructions: dict[str, str | None] = dict(
            DEFAULT_INSTRUCTIONS if instructions is None else instructions)
        if instructions_file is not None:
            self.instructions.update(load_instructions(instructions_file))
        self.both_sides_tasks = frozenset(both_sides_tasks)
        self.symmetric_task_types = frozenset(symmetric_task_types)
        self.task_types = dict(LOCAL_TASK_TYPES if task_types is None else task_types)
        self.use_instruction = use_instruction
        self.encode_kwargs = dict(encode_kwargs or {})
        self.model_meta = model_meta
        self.model_name, self.revision = model_name, revision
        self._warned: set[str] = set()

    # ----------------------------------------------------------------------------------- the rules
    def instruction_for(self, task_name: str, task_type: str | None, prompt_type: Any = None) -> str | None:
        """The instruction for one side of one task, or None for a plain encoding."""
        side = _side(prompt_type)
        if not self.use_instruction:
            return None
        task_type = task_type or self.task_types.get(task_name)
        symmetric = task_name in self.both_sides_tasks or task_type in self.symmetric_task_types
        if side == _DOCUMENT and not symmetric:
            return None
        if task_name in self.instructions:
            return self.instructions[task_name]
        if task_type in TYPE_FALLBACK_INSTRUCTIONS:
            if task_name not in self._warned:
                self._warned.add(task_name)
                warnings.warn(f"no instruction for task {task_name!r}; using the generic {task_type} one",
                              stacklevel=3)
            return TYPE_FALLBACK_INSTRUCTIONS[task_type]
        raise KeyError(f"no instruction for task {task_name!r} (type {task_type!r}): add it to the "
                       f"instructions JSON, or map it to null to encode without one")

    # --------------------------------------------------------------------------- mteb's interface
    def encode(
        self,
        inputs: Any,
        task_name: str | None = None,
        prompt_type: Any = None,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Both mteb call styles; returns float32 [N, D]. hf_split/hf_subset and mteb kwargs are unused."""
        if task_metadata is not None:
            task_name, task_type = task_metadata.name, getattr(task_metadata, "type", None)
        elif task_name is not None:
            task_type = None
        else:
            raise TypeError("encode() needs task_metadata (mteb v2) or task_name (mteb v1) to pick the instruction")
        texts = _texts(inputs)
        instruction = self.instruction_for(task_name, task_type, prompt_type)
        emb = np.asarray(self.encoder.encode(texts, instruction=instruction, **self.encode_kwargs), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"encoder returned shape {emb.shape} for {len(texts)} texts (task {task_name!r})")
        return emb

    @staticmethod
    def similarity(embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine similarity matrix [N, M] (QZhou's similarity function)."""
        a, b = _unit(embeddings1), _unit(embeddings2)
        return a @ b.T

    @staticmethod
    def similarity_pairwise(embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """Cosine of each aligned pair [N]."""
        a, b = _unit(embeddings1), _unit(embeddings2)
        if a.shape != b.shape:
            raise ValueError(f"pairwise similarity needs equal shapes, got {a.shape} and {b.shape}")
        return np.sum(a * b, axis=-1)

    @property
    def mteb_model_meta(self) -> Any:
        """An mteb ModelMeta naming this model and its weights (built once; needs the `mteb` package)."""
        if self.model_meta is None:
            self.model_meta = build_model_meta(self.encoder, name=self.model_name, revision=self.revision,
                                               use_instructions=self.use_instruction)
        return self.model_meta


def weights_fingerprint(params: Any) -> str:
    """sha256 (first 16 hex digits) over every parameter's path, dtype, shape and bytes, in pytree order."""
    import jax  # local: the adapter itself needs no JAX

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def build_model_meta(encoder: Any, *, name: str | None = None, revision: str | None = None,
                     use_instructions: bool = True) -> Any:
    """mteb.ModelMeta for `encoder`: name "qzhou-jax/<name>" (mteb wants an "org/model" form; a name holding a
    "/" is kept), revision the weights' fingerprint. An encoder without `params` needs an explicit revision."""
    from mteb.models.model_meta import ModelMeta

    name = name or getattr(encoder, "name", None)
    if not name:
        raise ValueError("mteb needs a model name to keep its result cache apart per model: pass model_name=")
    if "/" not in name:
        name = "qzhou-jax/" + (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model")
    if revision is None:
        if getattr(encoder, "params", None) is None:
            raise ValueError(f"{type(encoder).__name__} has no params to fingerprint: pass revision= (mteb caches "
                             f"scores by name and revision)")
        revision = weights_fingerprint(encoder.params)
    config = getattr(encoder, "config", None)
    return ModelMeta(
        loader=None, name=name, revision=revision, release_date=None, languages=None,
        n_parameters=config.num_params() if config is not None else None, memory_usage_mb=None,
        max_tokens=getattr(encoder, "max_length", None), embed_dim=getattr(config, "hidden_size", None),
        license=None, open_weights=None, public_training_code=None, public_training_data=None, framework=["JAX"],
        similarity_fn_name="cosine", use_instructions=use_instructions, training_datasets=None,
    )


def _unit(x: Any) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
