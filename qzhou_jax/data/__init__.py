"""Data pipeline: sample formats, transformations, sources, shared-data adapters, Grain mixture, tokenization.

Modules (one idea each): formats (sample shapes), errors (DataError, SkipCounter), transforms, sources (row
readers), adapters (rows -> samples), shared_data (the shared public datasets), spec (config.data schema),
mixture (sampling probabilities, per-dataset Grain streams, step mixture), tokenize (batch layout), pipeline
(build_pipeline, mixture_info), global_batch (to_global, imports JAX), inspect (CLI).
"""
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import (
    CLASSIFICATION,
    PAIR_SCORE,
    RETRIEVAL,
    TASK_TYPES,
    ClassificationSample,
    ClassificationTriplet,
    PairScoreSample,
    RetrievalSample,
)
from qzhou_jax.data.mixture import StepSelection, sampling_probabilities, step_mixture
from qzhou_jax.data.pipeline import MixtureInfo, build_pipeline, load_datasets, mixture_info
from qzhou_jax.data.shared_data import (
    SHARED_DATASETS,
    data_dir,
    read_answer_selection,
    read_beir,
    read_classification,
    read_nli,
    read_reading_comprehension,
    read_retrieval,
    read_sts,
)
from qzhou_jax.data.spec import DataConfig, DatasetSpec
from qzhou_jax.data.tokenize import BATCH_KEYS

__all__ = [
    "BATCH_KEYS", "CLASSIFICATION", "PAIR_SCORE", "RETRIEVAL", "SHARED_DATASETS", "TASK_TYPES",
    "ClassificationSample", "ClassificationTriplet", "DataConfig", "DataError", "DatasetSpec", "MixtureInfo",
    "PairScoreSample", "RetrievalSample", "SkipCounter", "StepSelection", "build_pipeline", "data_dir",
    "load_datasets", "mixture_info", "read_answer_selection", "read_beir", "read_classification", "read_nli",
    "read_reading_comprehension", "read_retrieval", "read_sts", "sampling_probabilities", "step_mixture",
]
