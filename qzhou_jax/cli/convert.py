"""`python -m qzhou_jax.hf.convert --from SRC --out HF_DIR`: import a base model as a Qwen2 directory
(qzhou_jax/hf/convert.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from qzhou_jax import cli_errors
from qzhou_jax.hf import convert


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.hf.convert", description=convert.__doc__.split("\n")[0])
    parser.add_argument("--from", dest="src", required=True,
                        help=f"a .gguf file, an HF Llama/Mistral/Qwen2 directory, or one of {sorted(convert.KNOWN_BASES)}")
    parser.add_argument("--out", required=True, help="the Qwen2 HF directory to write (model.hf_dir)")
    parser.add_argument("--dtype", choices=convert.DTYPES, default="auto",
                        help="weights dtype (auto: float32 for GGUF, the stored dtype for HF directories)")
    parser.add_argument("--pad-token", default=None, help="pad token (default: the source's, unless it is EOS)")
    parser.add_argument("--eos-token", default=None, help="EOS token (default: the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing directory at --out")
    parser.add_argument("--max-shard-size", type=float, default=5e9, help="bytes per safetensors shard")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    cli_errors.setup_logging(args.debug)
    with cli_errors.reported(args.debug):  # ConvertError, a missing or unwritable path: one line, exit 2 or 1
        out = convert.convert(args.src, args.out, dtype=args.dtype, pad_token=args.pad_token, eos_token=args.eos_token,
                      overwrite=args.overwrite, max_shard_bytes=args.max_shard_size)
    print(f"wrote {out} (model.hf_dir={out})")
    return out


if __name__ == "__main__":
    main()
