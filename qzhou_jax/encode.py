"""Batched inference: texts -> float32 L2-normalised embeddings, as an API and a CLI.

    python -m qzhou_jax.encode --model DIR --input texts.txt --output emb.npy [--instruction TEXT]

Texts are sorted by token length and batched so each batch pads little; batches are padded to a fixed batch size
and to one of a few bucket lengths, so the jitted forward compiles once per bucket, not once per batch.
Embeddings come back in input order.
"""
from __future__ import annotations

import argparse
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
from qzhou_jax.model import ModelConfig
from qzhou_jax.tokenizer import PromptConfig, bucket_length, load_tokenizer

log = logging.getLogger(__name__)


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
                 prompt: PromptConfig = PromptConfig(), buckets: Sequence[int] | None = None):
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.max_length, self.batch_size, self.prompt = max_length, batch_size, prompt
        self.buckets = tuple(buckets) if buckets else default_buckets(max_length)

    @classmethod
    def from_pretrained(cls, model_dir: str, *, dtype: str = "float32", attention: str | None = None,
                        pooling: str | None = None, **kwargs) -> "Encoder":
        """Loads an HF Qwen2 directory (or a qzhou-jax export). No tokenizer files there: the built-in Qwen2.5 one."""
        from qzhou_jax.hf.load import load_params  # local: keeps `import qzhou_jax.encode` light

        overrides = {k: v for k, v in (("attention", attention), ("pooling", pooling)) if v is not None}
        config = ModelConfig.from_hf(model_dir, param_dtype=dtype, dtype=dtype, **overrides)
        params = load_params(model_dir, config)
        tokenizer = load_tokenizer(model_dir)
        prompt = _prompt_from_dir(model_dir)
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
        out_dim = dim or self.config.hidden_size
        if not texts:
            return np.zeros((0, out_dim), np.float32)
        ids = self.token_ids(texts, instruction)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        result = np.zeros((len(texts), out_dim), np.float32)
        pad_id = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        start_time = time.time()
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            length = bucket_length(max(max(len(ids[r]) for r in rows), 1), self.buckets)
            input_ids = np.full((batch_size, length), pad_id, np.int32)
            mask = np.zeros((batch_size, length), np.int32)
            for j, r in enumerate(rows):
                n = len(ids[r])
                span = slice(length - n, length) if left else slice(0, n)
                input_ids[j, span], mask[j, span] = ids[r], 1
            emb = _embed_batch(self.params, input_ids, mask, self.config, dim)
            result[rows] = np.asarray(emb)[:len(rows)]
            if progress:
                done = min(start + batch_size, len(order))
                rate = done / max(time.time() - start_time, 1e-9)
                print(f"\rencoded {done}/{len(order)} ({rate:.1f} texts/s)", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        return result


def _prompt_from_dir(model_dir: str) -> PromptConfig:
    """An exported model records its query template in sentence-transformers' prompt config."""
    path = os.path.join(model_dir, "qzhou_prompt.json")
    if os.path.exists(path):
        with open(path) as f:
            spec = json.load(f)
        return PromptConfig(query_template=spec["query_template"], sep=spec.get("sep", " "))
    return PromptConfig()


def read_texts(path: str) -> list[str]:
    """One text per line, or JSONL with a `text` field (chosen by the .jsonl extension or a leading '{')."""
    texts = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    jsonl = path.endswith(".jsonl") or (lines and lines[0].lstrip().startswith("{"))
    for number, line in enumerate(lines, 1):
        if jsonl:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: field 'text' is missing or not a string")
            texts.append(record["text"])
        else:
            texts.append(line)
    return texts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.encode", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF Qwen2 directory or a qzhou-jax export")
    parser.add_argument("--input", required=True, help="one text per line, or JSONL with a 'text' field")
    parser.add_argument("--output", required=True, help="output .npy file, [N, D] float32")
    parser.add_argument("--instruction", default=None, help="query instruction (omit for documents)")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--attention", choices=("bidirectional", "causal"), default=None)
    parser.add_argument("--pooling", choices=("mean", "last"), default=None)
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka: keep the first DIM dimensions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    encoder = Encoder.from_pretrained(args.model, dtype=args.dtype, attention=args.attention,
                                      pooling=args.pooling, max_length=args.max_length,
                                      batch_size=args.batch_size)
    texts = read_texts(args.input)
    start = time.time()
    embeddings = encoder.encode(texts, args.instruction, dim=args.dim, progress=True)
    np.save(args.output, embeddings)
    log.info("wrote %s: %d x %d in %.1fs", args.output, *embeddings.shape, time.time() - start)


if __name__ == "__main__":
    main()
