"""What a training run must hand to export and evaluation: its prompt format and its tokenizer.

`run_metadata(cfg)` is merged into every checkpoint's meta by train.py; `prompt_from_meta` / `tokenizer_from_meta`
read it back (falling back on the recorded run config for checkpoints written before these keys existed). So a run
trained with `--config.data.prompt_sep=` exports (sentence-transformers prompts, qzhou_prompt.json) and evaluates
with the empty separator, and with the tokenizer it trained with.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from qzhou_jax.tokenizer import PromptConfig

TOKENIZER_DIR = "tokenizer"  # a training workdir's copy of its tokenizer (train.py writes it)


def prompt_config(cfg: Mapping) -> PromptConfig:
    """The query prompt the training data used: data/tokenize.py formats with PromptConfig's template and
    `data.prompt_sep` (default: DataConfig's)."""
    from qzhou_jax.data.spec import DataConfig  # local: the data package is heavier than this module

    data = cfg.get("data") or {}
    sep = data.get("prompt_sep") if hasattr(data, "get") else None
    return PromptConfig(sep=DataConfig.prompt_sep if sep is None else str(sep))


def tokenizer_source(cfg: Mapping) -> str | None:
    """The tokenizer directory the run used (model.tokenizer, else model.hf_dir); None: the built-in Qwen2.5 one."""
    model = cfg.get("model") or {}
    return model.get("tokenizer") or model.get("hf_dir") or None


def lora_base(cfg: Mapping) -> str | None:
    """The base a LoRA run's adapters apply to: its init_from (a workdir: that run's export dir), else
    model.hf_dir; None when the run started from a random preset."""
    from qzhou_jax.config.defaults import REQUIRED
    from qzhou_jax.run import checkpoint

    source = cfg.get("init_from") or ""
    if source in ("", "base", REQUIRED):
        return (cfg.get("model") or {}).get("hf_dir") or None
    return os.path.join(source, "export") if checkpoint.is_workdir(source) else source


def run_metadata(cfg: Mapping, tokenizer_dir: str | None = None) -> dict[str, Any]:
    """Keys for the checkpoint meta: {"prompt": {query_template, sep}, "tokenizer": dir or None}. `tokenizer_dir`:
    the copy the run saved in its workdir (train.py), else the configured source."""
    prompt = prompt_config(cfg)
    source = tokenizer_dir or tokenizer_source(cfg)
    return {"prompt": {"query_template": prompt.query_template, "sep": prompt.sep},
            "tokenizer": os.path.abspath(source) if source else None}


def prompt_from_meta(meta: Mapping | None) -> PromptConfig:
    """The prompt a checkpoint recorded; older checkpoints: derived from their run config."""
    meta = meta or {}
    spec = meta.get("prompt")
    if isinstance(spec, PromptConfig):
        return spec
    if isinstance(spec, Mapping):
        return PromptConfig(query_template=spec.get("query_template", PromptConfig.query_template),
                            sep=spec.get("sep", PromptConfig.sep))
    return prompt_config(meta.get("config") or {})


def tokenizer_from_meta(meta: Mapping | None, workdir: str | None = None) -> str | None:
    """The run's tokenizer directory: the copy in `workdir` (train.py saves one there, so a moved or copied
    workdir keeps it), else the one the checkpoint recorded; None: the built-in Qwen2.5 tokenizer."""
    if workdir and os.path.isfile(os.path.join(workdir, TOKENIZER_DIR, "tokenizer.json")):
        return os.path.join(workdir, TOKENIZER_DIR)
    meta = meta or {}
    if "tokenizer" in meta:
        return meta["tokenizer"] or None
    return tokenizer_source(meta.get("config") or {})


def resolve_workdir(path: str) -> str:
    """A training workdir to read: `path` itself, or for a multi-stage workdir (configs/demo.py writes
    path/<stage>/checkpoints) its last stage, i.e. the stage whose newest checkpoint was written last.

    Raises FileNotFoundError naming what is there when `path` holds neither.
    """
    import logging
    from pathlib import Path

    from qzhou_jax.run import checkpoint

    if checkpoint.is_workdir(path):
        return path
    root = Path(path)
    stages = sorted(p for p in root.iterdir() if p.is_dir() and checkpoint.is_workdir(str(p))) if root.is_dir() else []
    stages = [p for p in stages if checkpoint_steps(str(p))]
    if not stages:
        raise FileNotFoundError(f"{path}: not a training workdir (no checkpoints/ holding a checkpoint), nor a "
                                f"multi-stage workdir (no <stage>/checkpoints/)")
    last = max(stages, key=lambda p: os.path.getmtime(os.path.join(checkpoint.checkpoint_dir(str(p)),
                                                                   str(max(checkpoint_steps(str(p)))))))
    if len(stages) > 1:
        logging.getLogger(__name__).warning(
            "%s is a multi-stage workdir (stages: %s); using the last stage, %s (pass %s/<stage> for another)",
            path, ", ".join(p.name for p in stages), last.name, path)
    return str(last)


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the committed checkpoints, as Orbax lists them (readable or not)."""
    from qzhou_jax.run import checkpoint

    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        return []
    return sorted(checkpoint.read_only_manager(workdir).all_steps())
