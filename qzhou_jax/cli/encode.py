"""`python -m qzhou_jax.encode --model DIR --input texts.txt --output emb.npy`: batched inference
(qzhou_jax/encode.py)."""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from qzhou_jax import cli_errors, encode
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.model import ModelConfig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.encode", description=encode.__doc__.split("\n")[0])
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
    parser.add_argument("--max-batch-tokens", type=int, default=encode.DEFAULT_MAX_BATCH_TOKENS,
                        help="padded tokens per forward batch (long texts get smaller batches)")
    parser.add_argument("--empty-lines", choices=("error", "zeros"), default="error",
                        help="an empty input line: an error naming it (default), or an all-zero row")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    cli_errors.setup_logging(args.debug)

    with cli_errors.reported(args.debug):
        encode.check_model_dir(args.model, "--model")
        texts = encode.read_texts(args.input, empty_lines=args.empty_lines)  # a bad line is named before the model loads
        hidden = ModelConfig.from_hf(args.model).hidden_size
        if args.dim is not None and not 1 <= args.dim <= hidden:
            raise UsageError(f"--dim {args.dim}: must be within 1..{hidden} (the hidden size of {args.model})")
        encoder = encode.Encoder.from_pretrained(args.model, dtype=args.dtype, attention=args.attention,
                                          pooling=args.pooling, max_length=args.max_length,
                                          batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
        start = time.time()
        embeddings = encoder.encode(texts, args.instruction, dim=args.dim, progress=True)
        embeddings[[i for i, t in enumerate(texts) if not t.strip()]] = 0.0  # --empty-lines zeros: the documented row
        np.save(args.output, embeddings)
        encode.log.info("wrote %s: %d x %d in %.1fs", args.output, *embeddings.shape, time.time() - start)


if __name__ == "__main__":
    main()
