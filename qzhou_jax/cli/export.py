"""Export a trained model as a Hugging Face / sentence-transformers directory.

    python -m qzhou_jax.export --workdir DIR [--step N] --out HF_DIR [--dtype bfloat16|float32]
    python -m qzhou_jax.export --params-from-hf SRC_DIR --out HF_DIR [--dtype ...]   # re-export (e.g. dtype)
    python -m qzhou_jax.export --workdir DIR --out HF_DIR --peft-adapter ADAPTER_DIR  # LoRA run: + PEFT adapter

A LoRA run exports merged Qwen2 weights (serving unchanged); `--peft-adapter` also writes its adapters as a PEFT
directory that `peft.PeftModel.from_pretrained(base, ADAPTER_DIR)` loads on the base it was trained from.

A thin command line over `qzhou_jax.hf.export.export_hf`. Training checkpoints are read with
`qzhou_jax.run.checkpoint.restore_params(workdir, step)`; an HF source directory with `qzhou_jax.hf.load.load_params`
(its tokenizer and qzhou_prompt.json are carried over when present).
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

from qzhou_jax.hf.export import DEFAULT_MAX_SEQ_LENGTH, DEFAULT_QUERY_INSTRUCTION, EXPORT_DTYPES, export_hf
from qzhou_jax.model import ModelConfig
from qzhou_jax import cli_errors, encode
from qzhou_jax.run import meta as run_meta
from qzhou_jax.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def from_workdir(workdir: str, step: int | None, *, merge_lora: bool = True):
    """(params, config, prompt, tokenizer dir or None, source record) from a training workdir's checkpoint.

    A multi-stage workdir (path/<stage>/checkpoints) exports its last stage. The prompt and tokenizer are the ones
    the run recorded (run_meta.py; neither: the default prompt and the built-in Qwen2.5 tokenizer). When the newest
    checkpoint is unreadable an older one is exported: the log and the source record (written to the export's
    qzhou_export.json) say which step it is and which newer steps were skipped.
    """
    from qzhou_jax.run.checkpoint import restore_params  # local: Orbax is only needed for this source

    workdir = run_meta.resolve_workdir(workdir)
    params, config, meta = restore_params(workdir, step=step, merge_lora=merge_lora)
    meta = meta if isinstance(meta, dict) else {}
    exported = int(meta["step"])
    skipped = [s for s in run_meta.checkpoint_steps(workdir) if s > exported] if step is None else []
    if skipped:
        log.warning("%s: newest checkpoint(s) %s unreadable; exporting step %d", workdir, skipped, exported)
    else:
        log.info("%s: exporting checkpoint step %d", workdir, exported)
    source = {"workdir": os.path.abspath(workdir), "step": exported, "skipped_unreadable_steps": skipped}
    if config.lora_rank:  # unmerged (merge_lora=False): the adapters apply to this base
        source["lora_base"] = run_meta.lora_base(meta.get("config") or {})
    return params, config, run_meta.prompt_from_meta(meta), run_meta.tokenizer_from_meta(meta, workdir), source


def from_hf(model_dir: str, dtype: str):
    """(params, config, prompt, tokenizer dir) from an HF Qwen2 directory (a qzhou-jax export or a base model)."""
    from qzhou_jax.encode import prompt_from_dir
    from qzhou_jax.hf.load import load_params

    # Loading straight into the export dtype: exact for bf16 sources, and the same rounding export would do else.
    config = ModelConfig.from_hf(model_dir, param_dtype=dtype, dtype=dtype)
    source = {"hf_dir": os.path.abspath(model_dir)}
    return load_params(model_dir, config), config, prompt_from_dir(model_dir), model_dir, source


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir holding Orbax checkpoints (multi-stage: the last stage)")
    source.add_argument("--params-from-hf", metavar="HF_DIR", help="re-export an HF Qwen2 / qzhou-jax directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="bfloat16")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the source's, else the built-in Qwen2.5 tokenizer)")
    parser.add_argument("--max-shard-size", type=float, default=5e9, help="bytes per safetensors shard")
    parser.add_argument("--max-seq-length", type=int, default=DEFAULT_MAX_SEQ_LENGTH)
    parser.add_argument("--query-instruction", default=DEFAULT_QUERY_INSTRUCTION,
                        help="instruction of sentence-transformers' 'query' prompt, which encode_query applies "
                             "(default: QZhou's web-search retrieval one; '' makes encode_query add nothing)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    parser.add_argument("--peft-adapter", metavar="ADAPTER_DIR", default=None,
                        help="a LoRA run (--workdir): also write its adapters as a PEFT adapter directory")
    cli_errors.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.step is not None and not args.workdir:
        parser.error("--step needs --workdir")
    if args.peft_adapter and not args.workdir:
        parser.error("--peft-adapter needs --workdir (a run trained with model.lora.rank > 0)")
    cli_errors.setup_logging(args.debug)

    with cli_errors.reported(args.debug):
        if not args.overwrite and holds_model(args.out):  # before a checkpoint (minutes for 7B) is restored
            raise cli_errors.UsageError(f"--out {args.out} already holds a model (config.json or weights); "
                                        f"pass --overwrite to replace it")
        if args.workdir and args.peft_adapter:
            from qzhou_jax import model as qmodel
            from qzhou_jax.hf.peft import write_adapter

            params, config, prompt, tokenizer_dir, source = from_workdir(args.workdir, args.step, merge_lora=False)
            if not config.lora_rank:
                raise cli_errors.UsageError(f"--peft-adapter: {args.workdir} was not trained with LoRA "
                                            f"(model.lora.rank = 0)")
            write_adapter(params, config, args.peft_adapter, base_model=source.get("lora_base"))
            params, config = qmodel.merge_lora(params, config)
        elif args.workdir:
            params, config, prompt, tokenizer_dir, source = from_workdir(args.workdir, args.step)
        else:
            encode.check_model_dir(args.params_from_hf, "--params-from-hf")
            params, config, prompt, tokenizer_dir, source = from_hf(args.params_from_hf, args.dtype)
        tokenizer = load_tokenizer(args.tokenizer or tokenizer_dir)  # a dir without tokenizer files: built-in
        export_hf(params, config, args.out, tokenizer=tokenizer, dtype=args.dtype, prompt=prompt,
                  max_shard_bytes=args.max_shard_size, max_seq_length=args.max_seq_length,
                  query_instruction=args.query_instruction, overwrite=args.overwrite, source=source)


def holds_model(out_dir: str) -> bool:
    """What export_hf refuses to replace without overwrite: a config.json or safetensors weights."""
    return os.path.exists(os.path.join(out_dir, "config.json")) or bool(
        glob.glob(os.path.join(glob.escape(out_dir), "model*.safetensors*")))


if __name__ == "__main__":
    main()
