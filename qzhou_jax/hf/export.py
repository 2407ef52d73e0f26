"""Flax params -> a Hugging Face / sentence-transformers model directory.

`export_hf` writes what three consumers need from one directory:
- transformers: `Qwen2Model` safetensors (single file, or shards + `model.safetensors.index.json`), `config.json`
  with `auto_map` -> `modeling_qzhou.QZhouEmbeddingModel` (bidirectional attention; load with
  `AutoModel.from_pretrained(dir, trust_remote_code=True)`), and the tokenizer files;
- sentence-transformers: modules.json (Transformer -> Pooling -> Normalize), sentence_bert_config.json,
  1_Pooling/config.json, 2_Normalize/, config_sentence_transformers.json (prompts); the legacy file layout, which
  sentence-transformers 2.x to 6.x all read;
- qzhou-jax: `qzhou_prompt.json` (query template and separator) for `qzhou_jax.encode.Encoder.from_pretrained`,
  and `qzhou_export.json` (what was exported: workdir and checkpoint step, or the HF source).
The tokenizer files name `PreTrainedTokenizerFast`, so transformers 4.x loads them as well as 5.x.

Weights are streamed: one tensor (one layer's slice of a scanned, stacked leaf) is brought to the host at a time,
converted through the single name/layout table of `mapping.py`, and written shard by shard, so a model sharded over
a mesh is never gathered whole; the host holds at most one safetensors shard. Sharded arrays that span processes are
gathered tensor by tensor with `process_allgather` (every process must call `export_hf`); only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from qzhou_jax.hf import mapping
from qzhou_jax.model.config import ModelConfig
from qzhou_jax.hf.tokenizer_files import save_tokenizer
from qzhou_jax.tokenizer import PromptConfig, check_vocab, load_tokenizer

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
MODELING_FILE = "modeling_qzhou.py"
MODEL_CLASS = "QZhouEmbeddingModel"
PROMPT_FILE = "qzhou_prompt.json"
SOURCE_FILE = "qzhou_export.json"  # what was exported: workdir and checkpoint step (or the HF source)
EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# sentence-transformers' `query` prompt, which `encode_query()` (and `prompt_name="query"`) applies: chosen to be the
# retrieval instruction of QZhou-Embedding's model card, since retrieval is what encode_query/encode_document are
# for. Symmetric tasks (STS, classification, clustering) need their own instruction on both sides: pass
# `prompt=` explicitly. `export --query-instruction ""` makes encode_query add nothing.
DEFAULT_QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_SEQ_LENGTH = 8192  # docs/recipe.md section 1: contexts up to 8k tokens at inference


# --------------------------------------------------------------------------------------------------- tensors


@dataclasses.dataclass(frozen=True)
class HFTensor:
    name: str                      # HF (Qwen2Model) tensor name
    entry: mapping.TensorMap
    layer: int | None              # layer index for per-layer tensors


def hf_tensors(config: ModelConfig) -> list[HFTensor]:
    """Every exported tensor in checkpoint order: embeddings, then layer by layer, then the final norm."""
    entries = mapping.tensor_maps(config)
    per_layer = [e for e in entries if e.per_layer]
    head = [HFTensor(e.hf_name, e, None) for e in entries if not e.per_layer and e.hf_name.startswith("embed")]
    tail = [HFTensor(e.hf_name, e, None) for e in entries if not e.per_layer and not e.hf_name.startswith("embed")]
    layers = [HFTensor(e.hf_name.format(i=i), e, i) for i in range(config.num_layers) for e in per_layer]
    return head + layers + tail


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: float) -> list[list[str]]:
    """Greedy split, in order, into shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    filled = 0
    for name, nbytes in sizes:
        if shards[-1] and filled + nbytes > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    return shards if shards[0] else []


def _normalise(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def fetch(leaf, layer: int | None = None) -> np.ndarray:
    """One tensor on the host: the whole leaf, or its `layer`-th slice along axis 0 (scanned layers).

    A fully addressable jax.Array is assembled from its local shards (each distinct shard copied once, only the
    requested layer); an array spanning processes is sliced and gathered collectively, so every process must call
    this in the same order.
    """
    if not isinstance(leaf, jax.Array):
        array = np.asarray(leaf)
        return array if layer is None else array[layer]
    if not leaf.is_fully_addressable:
        return gather(leaf, layer)
    shape = leaf.shape if layer is None else leaf.shape[1:]
    out = np.empty(shape, leaf.dtype)
    copied = set()
    for shard in leaf.addressable_shards:
        index = _normalise(shard.index, leaf.shape)
        data = shard.data
        if layer is not None:
            (start, stop), index = index[0], index[1:]
            if not start <= layer < stop:
                continue
            data = data[layer - start]
        if index in copied:  # a replica of a block already copied
            continue
        copied.add(index)
        out[tuple(slice(a, b) for a, b in index)] = np.asarray(data)
    return out


def gather(leaf: jax.Array, layer: int | None = None) -> np.ndarray:
    """Collective fetch for arrays spanning processes: slice (on device), then all-gather one tensor to the host."""
    part = leaf if layer is None else leaf[layer]
    return np.asarray(multihost_utils.process_allgather(part, tiled=True))


def _leaf(params, path: tuple[str, ...], name: str):
    tree = params
    for key in path:
        try:
            tree = tree[key]
        except (KeyError, TypeError, IndexError):
            raise KeyError(f"params lack {'/'.join(path)} (needed for HF tensor {name!r})") from None
    return tree


def iter_hf_tensors(params, config: ModelConfig, dtype: str = "float32",
                    tensors: list[HFTensor] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array in HF layout and `dtype`), one tensor at a time."""
    target = export_dtype(dtype)
    for t in tensors if tensors is not None else hf_tensors(config):
        path = mapping.flax_path(t.entry, config, t.layer)
        leaf = _leaf(params, path, t.name)
        stacked = t.entry.per_layer and config.scan_layers
        if stacked and (leaf.ndim < 1 or leaf.shape[0] != config.num_layers):
            raise ValueError(f"params {'/'.join(path)}: shape {list(leaf.shape)}, expected {config.num_layers} "
                             f"stacked layers first (config.scan_layers=True)")
        tensor = t.entry.to_hf(fetch(leaf, t.layer if stacked else None))
        if tuple(tensor.shape) != tuple(t.entry.hf_shape):
            raise ValueError(f"params {'/'.join(path)} give HF tensor {t.name!r} of shape {list(tensor.shape)}, "
                             f"expected {list(t.entry.hf_shape)} from the config")
        yield t.name, np.ascontiguousarray(tensor.astype(target, copy=False))


def export_dtype(dtype: str) -> np.dtype:
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    return EXPORT_DTYPES[dtype]


def write_weights(params, config: ModelConfig, out_dir: str | os.PathLike, *, dtype: str = "float32",
                  max_shard_bytes: float = 5e9) -> list[str]:
    """Writes the safetensors file(s) (+ index when sharded); returns the file names. Only process 0 writes."""
    out_dir = Path(out_dir)
    itemsize = export_dtype(dtype).itemsize
    tensors = hf_tensors(config)
    by_name = {t.name: t for t in tensors}
    shards = plan_shards([(t.name, int(np.prod(t.entry.hf_shape)) * itemsize) for t in tensors], max_shard_bytes)
    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    files = [WEIGHTS_NAME] if len(shards) == 1 else [SHARD_NAME.format(k + 1, len(shards)) for k in range(len(shards))]
    weight_map, total = {}, 0
    for file, names in zip(files, shards):
        block = dict(iter_hf_tensors(params, config, dtype, [by_name[n] for n in names]))
        total += sum(a.nbytes for a in block.values())
        weight_map.update({n: file for n in names})
        if writer:
            save_file(block, str(out_dir / file), metadata={"format": "pt"})
            log.info("wrote %s (%d tensors)", out_dir / file, len(block))
        del block
    if writer and len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return files


# --------------------------------------------------------------------------------------------------- metadata


def hf_config(config: ModelConfig, dtype: str, tokenizer=None) -> dict:
    """config.json: the Qwen2 config (marked bidirectional by `to_hf`) plus the remote-code class; the special token
    ids are the exported tokenizer's (an imported base has its own, e.g. SmolLM2's eos 2, pad 0)."""
    hf = config.to_hf(dtype)
    if tokenizer is not None:
        hf.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    hf["dtype"] = dtype  # transformers 5 reads `dtype`; 4.x reads `torch_dtype` (kept by to_hf)
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta}
    hf["use_cache"] = False
    hf["auto_map"] = {"AutoModel": f"{Path(MODELING_FILE).stem}.{MODEL_CLASS}"}
    return hf


def query_prompt(prompt: PromptConfig, instruction: str) -> str:
    """The literal prefix sentence-transformers prepends: `prompt.format_query(text, instruction)` minus the text."""
    return prompt.format_query("", instruction)


def sentence_transformers_files(config: ModelConfig, *, max_seq_length: int, prompt: PromptConfig,
                                query_instruction: str) -> dict[str, dict | list]:
    """Relative path -> JSON content of the sentence-transformers configuration (legacy keys, read by 2.x..6.x)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": config.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": config.pooling == "last",
        "include_prompt": True,  # QZhou pools over the instruction tokens too (docs/recipe.md section 1)
    }
    st_config = {
        "prompts": {"query": query_prompt(prompt, query_instruction), "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "model_type": "SentenceTransformer",
    }
    return {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": pooling,
        "config_sentence_transformers.json": st_config,
        PROMPT_FILE: {
            "query_template": prompt.query_template,
            "sep": prompt.sep,
            "note": "query text = query_template.format(instruction=...) + sep + text; documents get no prompt. "
                    "sentence-transformers: encode(..., prompt=PREFIX) with PREFIX = query_template.format("
                    "instruction=...) + sep, or prompt_name='query' for the default retrieval instruction.",
        },
    }


def check_tokenizer(tokenizer, config: ModelConfig) -> None:
    """The encoder adds no special tokens and sentence-transformers tokenises with the defaults: both must agree."""
    sample = "Instruct: check\nQuery: hello world"
    plain = tokenizer(sample, add_special_tokens=False)["input_ids"]
    default = tokenizer(sample)["input_ids"]
    if plain != default:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} adds special tokens ({default} vs {plain}): "
                         "sentence-transformers would then embed different tokens than qzhou_jax.encode")
    check_vocab(tokenizer, config.vocab_size, "export")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token")


def _readme(config: ModelConfig, prompt: PromptConfig, instruction: str) -> str:
    return f"""# QZhou-Embedding (qzhou-jax export)

Qwen2 with bidirectional attention, {config.pooling} pooling and L2 normalisation; {config.hidden_size}-dim embeddings.

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(PATH, trust_remote_code=True)
docs = model.encode_document(documents)  # documents: no prompt
queries = model.encode_query(queries)     # the "query" prompt: {query_prompt(prompt, instruction)!r}
texts = model.encode(texts, prompt={query_prompt(prompt, "YOUR INSTRUCTION")!r})  # other tasks, both sides
```

transformers: `AutoModel.from_pretrained(PATH, trust_remote_code=True)`. Without `trust_remote_code` the stock
Qwen2Model is loaded: transformers 5.x honours `is_causal: false` in config.json, older versions attend causally and
give wrong embeddings. qzhou-jax: `qzhou_jax.encode.Encoder.from_pretrained(PATH)`.
"""


def export_hf(params, config: ModelConfig, out_dir: str | os.PathLike, *, tokenizer=None, dtype: str = "bfloat16",
              prompt: PromptConfig = PromptConfig(), max_shard_bytes: float = 5e9,
              max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
              overwrite: bool = False, source: dict | None = None) -> Path:
    """Writes an HF + sentence-transformers model directory from `Qwen2Encoder(config)` params; returns it.

    `params` may be numpy, single-device or sharded jax arrays (scanned or unscanned layers). `tokenizer`: default
    the built-in Qwen2.5 one. `max_seq_length` (capped at config.max_position_embeddings) is sentence-transformers'
    truncation length. An existing export in `out_dir` is replaced only with `overwrite=True`. In a multi-process
    run every process must call this (collective gathers); process 0 writes. `source` (e.g. {"workdir", "step"})
    is recorded in qzhou_export.json.
    """
    export_dtype(dtype)
    out_dir = Path(out_dir)
    writer = jax.process_index() == 0
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(None)
    check_tokenizer(tokenizer, config)
    error = None
    if writer:
        try:
            _prepare(out_dir, overwrite)
        except Exception as e:  # raised after telling the other processes, which would otherwise wait in gathers
            error = e
    if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and not error:
        raise RuntimeError(f"process 0 could not prepare {out_dir}")
    if error is not None:
        raise error
    write_weights(params, config, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)
    if writer:
        _write_metadata(out_dir, config, tokenizer, dtype, prompt, max_seq_length, query_instruction)
        _write_json(out_dir / SOURCE_FILE, {"dtype": dtype, **(source or {})})
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("qzhou_jax.export_hf")  # nobody reads a half-written directory
    return out_dir


def _write_metadata(out_dir: Path, config: ModelConfig, tokenizer, dtype: str, prompt: PromptConfig,
                    max_seq_length: int, query_instruction: str) -> None:
    _write_json(out_dir / "config.json", hf_config(config, dtype, tokenizer))
    shutil.copyfile(Path(__file__).with_name(MODELING_FILE), out_dir / MODELING_FILE)
    save_tokenizer(tokenizer, out_dir)
    length = min(max_seq_length, config.max_position_embeddings)
    files = sentence_transformers_files(config, max_seq_length=length, prompt=prompt,
                                        query_instruction=query_instruction)
    for relative, content in files.items():
        _write_json(out_dir / relative, content)
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    (out_dir / "README.md").write_text(_readme(config, prompt, query_instruction))
    log.info("exported %s (%s, %d layers, hidden %d)", out_dir, dtype, config.num_layers, config.hidden_size)


def _prepare(out_dir: Path, overwrite: bool) -> None:
    """Creates `out_dir`; stale weight files of an earlier export would mix with the new ones, so they go."""
    stale = [out_dir / INDEX_NAME, out_dir / WEIGHTS_NAME,
             *map(Path, glob.glob(str(out_dir / SHARD_NAME.replace("{:05d}", "*"))))]
    stale = [p for p in stale if p.exists()]
    if (stale or (out_dir / "config.json").exists()) and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds a model (config.json or weights); pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.unlink()


def _write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
