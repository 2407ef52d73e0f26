"""Batched inference: texts -> float32 L2-normalised embeddings, as an API and a CLI.

    python -m qzhou_jax.encode --model DIR --input texts.txt --output emb.npy [--instruction TEXT] [--dim D]

Input: one text per line (lines end at "\n" only, a trailing "\r" is dropped; form feeds, U+0085 and U+2028 stay
inside their line), or JSONL with a `text` field. Row i of the output is line i: an empty line is an error naming
its number unless `--empty-lines zeros` asks for an all-zero row there; bytes that are not UTF-8 name the line.

Texts are sorted by token length and batched so each batch pads little; a batch is padded to one of a few bucket
lengths and to a row count fixed per bucket, so the jitted forward compiles once per bucket, not once per batch.
Rows per batch are `batch_size`, fewer for long buckets: a batch never holds more than `max_batch_tokens` padded
tokens, so one very long text cannot blow the activation memory up. Embeddings come back in input order.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np

from qzhou_jax import model as qmodel
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.model import ModelConfig
from qzhou_jax.tokenizer import PromptConfig, bucket_length, check_vocab, load_tokenizer, pad_rows

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 16384  # padded tokens per forward batch: 32 texts of 512 tokens, 2 of 8192


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to (and including) max_length."""
    buckets, n = [], smallest
    while n < max_length:
        buckets.append(n)
        n *= 2
    return tuple(buckets) + (max_length,)


@functools.partial(jax.jit, static_argnames=("config", "dim"))
def _embed_batch(params, input_ids, attention_mask, config: ModelConfig, dim: int | None):
    return qmodel.embed_tokens(params, config, input_ids, attention_mask, dim)


class Encoder:
    """The embedding model with its tokenizer and prompt format.

    `encode(texts, instruction)` prompts every text with the instruction (queries, or both sides of a symmetric
    task); `instruction=None` encodes plain documents.
    """

    def __init__(self, params, config: ModelConfig, tokenizer, *, max_length: int = 8192, batch_size: int = 32,
                 prompt: PromptConfig = PromptConfig(), buckets: Sequence[int] | None = None,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, name: str | None = None):
        check_vocab(tokenizer, config.vocab_size, "encode")
        if batch_size < 1 or max_length < 1 or max_batch_tokens < 1:
            raise UsageError(f"batch_size ({batch_size}), max_length ({max_length}) and max_batch_tokens "
                             f"({max_batch_tokens}) must be >= 1")
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.max_length, self.batch_size, self.prompt = max_length, batch_size, prompt
        self.max_batch_tokens = max_batch_tokens
        self.name = name  # e.g. for mteb's ModelMeta
        self.buckets = tuple(buckets) if buckets else default_buckets(max_length)

    def rows_per_batch(self, length: int, batch_size: int | None = None) -> int:
        """Rows of a batch padded to `length`: batch_size, fewer when that would exceed max_batch_tokens."""
        return max(1, min(batch_size or self.batch_size, self.max_batch_tokens // length))

    @classmethod
    def from_pretrained(cls, model_dir: str, *, dtype: str = "float32", attention: str | None = None,
                        pooling: str | None = None, **kwargs) -> "Encoder":
        """Loads an HF Qwen2 directory (or a qzhou-jax export). No tokenizer files there: the built-in Qwen2.5 one."""
        from qzhou_jax.hf.load import load_params  # local: keeps `import qzhou_jax.encode` light

        check_model_dir(model_dir)
        overrides = {k: v for k, v in (("attention", attention), ("pooling", pooling)) if v is not None}
        config = ModelConfig.from_hf(model_dir, param_dtype=dtype, dtype=dtype, **overrides)
        params = load_params(model_dir, config)
        tokenizer = load_tokenizer(model_dir)
        prompt = prompt_from_dir(model_dir)
        kwargs.setdefault("name", os.path.basename(os.path.normpath(model_dir)))
        return cls(params, config, tokenizer, prompt=prompt, **kwargs)

    def token_ids(self, texts: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        texts = [self.prompt.format_query(t, instruction) for t in texts]
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length,
                              return_attention_mask=False)["input_ids"]

    def encode(self, texts: Sequence[str], instruction: str | None = None, *, batch_size: int | None = None,
               dim: int | None = None, progress: bool = False) -> np.ndarray:
        """[N, D] float32 unit vectors in input order (`dim`: Matryoshka truncation)."""
        texts = list(texts)
        batch_size = batch_size or self.batch_size
        if dim is not None and not 1 <= dim <= self.config.hidden_size:
            raise UsageError(f"dim {dim}: must be within 1..{self.config.hidden_size} (the model's hidden size)")
        out_dim = dim or self.config.hidden_size
        if not texts:
            return np.zeros((0, out_dim), np.float32)
        ids = self.token_ids(texts, instruction)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        result = np.zeros((len(texts), out_dim), np.float32)
        side = self.tokenizer.padding_side
        start_time, start = time.time(), 0
        while start < len(order):  # longest first: each batch's first row fixes its bucket
            length = bucket_length(max(len(ids[order[start]]), 1), self.buckets)
            num_rows = self.rows_per_batch(length, batch_size)
            rows = order[start:start + num_rows]
            input_ids, mask = pad_rows([ids[r] for r in rows], length, self.tokenizer.pad_token_id, side, num_rows)
            emb = _embed_batch(self.params, input_ids, mask, self.config, dim)
            result[rows] = np.asarray(emb)[:len(rows)]
            start += len(rows)
            if progress:
                elapsed = max(time.time() - start_time, 1e-9)
                eta = (len(order) - start) * elapsed / start
                print(f"\rencoded {start}/{len(order)} ({start / elapsed:.1f} texts/s, ETA {eta:.0f}s)", end="",
                      file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        return result


def check_model_dir(model_dir: str, flag: str = "model directory") -> None:
    """An HF Qwen2 directory or a qzhou-jax export holds config.json (its weights are checked as they load)."""
    if not os.path.isdir(model_dir):
        raise UsageError(f"{flag} {model_dir}: no such directory")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise UsageError(f"{flag} {model_dir}: no config.json there, so it is not an HF Qwen2 directory or a "
                         f"qzhou-jax export")


def prompt_from_dir(model_dir: str) -> PromptConfig:
    """An exported model records its query template in sentence-transformers' prompt config."""
    path = os.path.join(model_dir, "qzhou_prompt.json")
    if os.path.exists(path):
        with open(path) as f:
            spec = json.load(f)
        return PromptConfig(query_template=spec["query_template"], sep=spec.get("sep", " "))
    return PromptConfig()


def read_texts(path: str, *, empty_lines: str = "error") -> list[str]:
    """One text per line, or JSONL with a `text` field (chosen by the .jsonl extension or a leading '{').

    Lines end at "\n" only (a trailing "\r" goes with it), so row i of the embeddings is line i. An empty line (or
    JSONL text) raises ValueError naming its number, unless empty_lines="zeros": then it stays a row (the CLI writes
    an all-zero embedding there) and the count is logged. Invalid UTF-8 names the line.
    """
    if empty_lines not in ("error", "zeros"):
        raise ValueError(f"empty_lines must be 'error' or 'zeros', got {empty_lines!r}")
    with open(path, "rb") as f:
        data = f.read()
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":  # the newline that ends the last line opens no new one
        raw.pop()
    lines = []
    for number, line in enumerate(raw, 1):
        try:
            lines.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}:{number}: not UTF-8 (byte {line[e.start:e.start + 1]!r} at column "
                             f"{e.start + 1})") from None
    jsonl = path.endswith(".jsonl") or bool(lines and lines[0].lstrip().startswith("{"))
    texts, empty = [], []
    for number, line in enumerate(lines, 1):
        text = line
        if jsonl and line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UsageError(f"{path}:{number}: field 'text' is missing or not a string")
            text = record["text"]
        if not text.strip():
            if empty_lines == "error":
                what = "an empty 'text'" if jsonl and line.strip() else "an empty line"
                raise UsageError(f"{path}:{number}: {what}; every line is one text, so remove it, or pass "
                                 f"--empty-lines zeros to keep an all-zero row for it")
            empty.append(number)
        texts.append(text)
    if empty:
        log.warning("%s: %d empty line(s) (first: line %d) get all-zero embeddings", path, len(empty), empty[0])
    return texts


if __name__ == "__main__":  # `python -m qzhou_jax.encode`: the command is qzhou_jax/cli/encode.py
    from qzhou_jax.cli.encode import main

    main()
