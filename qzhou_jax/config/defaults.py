"""Defaults shared by every training config: the ONE table of documented keys (configs/*.py start from `base()`
and change what differs; they never replace a whole block, so every key stays overridable on every config).
These are starting values, not the recipe: configs/stage1.py and configs/stage2.py set every number of the paper
themselves, each citing its section of docs/recipe.md. `stages(...)` chains configs into one run.

Sections: model, init_from, mesh, loss, optim, train, data, checkpoint, eval, export, mine, merge. Every key can be
overridden on the command line, e.g. `--config.optim.lr=1e-5 --config.mesh.shape="(1,-1,1)"`; unknown keys are rejected.
A key whose default is None is declared with `optional(type)` so that an override of it parses
(`--config.data.eta=0.72`). Adding a key is one line in its block's table below.
"""
import ml_collections

REQUIRED = "<required>"  # init_from of configs/stage2.py: the run refuses to start until it is set


def optional(field_type):
    """A None default that `--config.x=value` can still override (a bare None has no type to parse into)."""
    return ml_collections.FieldReference(None, field_type=field_type)


MODEL = dict(
    hf_dir="",            # HF Qwen2 directory (weights + config.json); empty: a preset with random init
    preset="demo",        # used when hf_dir is empty (qzhou_jax/model/config.py PRESETS)
    tokenizer="",         # tokenizer dir; empty: hf_dir's, else the built-in Qwen2.5 tokenizer
    attention="bidirectional",
    pooling="mean",
    dtype="bfloat16",     # compute dtype (docs/recipe.md section 6: bf16)
    param_dtype="float32",  # master weights
    remat_policy="full",  # none | full | dots | dots_no_batch
    scan_layers=True,
    attention_impl="auto",  # auto | xla | cudnn | splash (model/attention.py; auto: tpu->splash, gpu->cudnn)
    trainable="all",      # all | top:N (partial fine-tuning: top N layers + final norm; embedding frozen) | layers
    # LoRA (model/lora.py; peft's conventions): rank 0 = off; the base is frozen. Defaults as FlagEmbedding's
    # decoder-only embedder (alpha 16, dropout 0.1, all seven projections); scaling alpha / rank.
    lora=dict(rank=0, alpha=16.0, dropout=0.1,
              targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
)
# Checked against losses.LossConfig's defaults by tests/config/test_defaults.py.
LOSS = dict(
    tau=0.02, cosent_tau=0.02, hard_negatives=True, in_batch_docs=True, query_query=True,
    doc_query=False, doc_doc=False, false_negative_margin=(None, float), matryoshka_dims=(None, tuple),
)
OPTIM = dict(
    lr=2e-5,
    warmup_steps=300,     # in optimizer updates (= train.steps / grad_accum_steps of them in all)
    decay="linear",       # linear | cosine | constant (linear to 0: unconfirmed)
    final_lr_ratio=0.0, b1=0.9, b2=0.999, eps=1e-8,
    weight_decay=0.01,    # on kernels and embeddings only (unconfirmed)
    grad_clip=1.0,        # global-norm clipping; 0 disables (unconfirmed)
    grad_accum_steps=1,   # micro-batches per optimizer update (shrinks in-batch negatives; GradCache does not)
)
TRAIN = dict(
    steps=8000,           # micro-batches (loop steps); logs and checkpoints count these
    seed=0, log_every=10, gradcache_chunks=0, max_consecutive_nonfinite=20,
    stall_steps=20,       # warn when grad norm is exactly 0 or the loss is constant this many steps in a row
    peak_flops_per_device=0.0,  # 0: looked up from the device kind (TPU v4/v5/v6, A100, H100, ...)
)
# The data block; qzhou_jax/data/spec.py (DataConfig) takes its defaults from here. `datasets` is set per config.
DATA = dict(
    datasets=[],
    alpha=0.5,            # p_i proportional to n_i^alpha
    eta=(None, float),    # stage 2: retrieval share of batches (docs/recipe.md section 5: 0.72); None: plain n^alpha
    batch_size=dict(retrieval=256, pair_score=768, classification=256),  # GLOBAL, per task type
    buckets=(32, 64, 128, 256, 512, 1024, 1536),
    seed=0,
    skip_invalid=False,   # count and skip malformed rows instead of raising
    max_skipped_fraction=0.01,  # with skip_invalid: stop when more than this share of a dataset's rows is bad
    prompt_sep=" ",       # text between "Query:" and the text
    num_threads=2, prefetch_buffer_size=4,
    packing=0,            # tokens per packed row (data/packing.py), e.g. the max passage length; 0: padded
    verify="quick",       # prepared: sources at start-up: quick (sizes, records, digests of each end) | full | off
)
CHECKPOINT = dict(every=500, keep=3, keep_best=False, best_metric="", async_save=True)
# split "dev" where a task has one (its own split otherwise): the best checkpoint is not picked on test data.
EVAL = dict(every=1000, tasks=(), split="dev", max_examples=0, batch_size=64, max_length=512)
EXPORT = dict(at_end=True, dtype="bfloat16",
              peft_adapter=False)  # LoRA runs: also write WORKDIR/peft_adapter (peft loads it on the base)
TOP = dict(
    init_from="",         # a stage-1 workdir (params only) or an HF dir; "base": model.hf_dir / the preset
    plot=True,
    distributed=False,    # multi-host: call jax.distributed.initialize() (TPU VMs / SLURM fill in the rest)
)
# Multi-stage configs: re-mine this stage's retrieval datasets with the previous stage's final model before
# training (qzhou_jax/mining/stages.py). datasets=() mines every retrieval dataset; negatives=0 keeps each
# dataset's num_negatives; window (10, 30) skips the top 10 and samples up to rank 30 (docs/recipe.md section 4);
# rule "none" | "relative_margin" | "max_score_ratio" with rule_value (e.g. 0.05 / 0.95); min_positive_rank 0
# and min_positive_score -1 keep every query; max_length 0: each dataset's max_len_passage; cache "": the stage's
# mined/cache (embeddings are keyed by model fingerprint and texts, so runs mining with the same model can share one);
# model "": the model that starts the stage (the previous stage's final weights, else init_from, else model.hf_dir),
# "base": model.hf_dir even after a previous stage, or a workdir / HF directory.
# every=K (> 0): also refresh them DURING the stage, every K steps, with the live params (mining/refresh.py).
MINE = dict(
    enabled=False, model="", datasets=(), negatives=0, window=(10, 30), keep_existing=False, rule="none", rule_value=0.0,
    min_positive_rank=0, min_positive_score=-1.0, max_length=0, batch_size=32, encode_chunk=4096, seed=0, cache="",
    every=0,
)
# A merge stage (multi-stage configs; qzhou_jax/merging/stages.py): enabled=True makes the stage merge instead of
# train. models: earlier stage names of this run, workdirs or HF dirs; weights: one per model (() = equal;
# slerp's t is w2 / (w1 + w2)); base: ties' common ancestor (a stage name, a path, or "base" = this stage's
# model.hf_dir); density / scale: ties' kept fraction and lambda; normalize: divide by the (agreeing) weights' sum.
MERGE = dict(enabled=False, method="linear", models=(), weights=(), base="", density=0.2, scale=1.0, normalize=True,
             dtype="float32")
BLOCKS = dict(model=MODEL, loss=LOSS, optim=OPTIM, train=TRAIN, data=DATA, checkpoint=CHECKPOINT, eval=EVAL,
              export=EXPORT, mine=MINE, merge=MERGE)


def plain_default(value):
    """A table entry as a plain value: (None, type) -> None."""
    return None if isinstance(value, tuple) and len(value) == 2 and value[0] is None else value


def _block(table: dict) -> ml_collections.ConfigDict:
    block = ml_collections.ConfigDict()
    for key, value in table.items():
        if isinstance(value, tuple) and len(value) == 2 and value[0] is None and isinstance(value[1], type):
            block[key] = optional(value[1])
        elif isinstance(value, dict):
            block[key] = ml_collections.ConfigDict(value)
        else:
            block[key] = value
    return block


def stages(**named: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The one way to chain stages: `stages(stage1=c1, stage2=c2)` runs them in order, each in `workdir/<name>`, every
    stage after the first initialised from the previous one's final params (train.run)."""
    return ml_collections.ConfigDict(dict(stages=dict(named)))


def sibling(config_file: str, name: str):
    """A module beside a config file (configs/qwen25_7b.py next to configs/stage1.py), loaded by path: config files
    are loaded by path, not imported as a package."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
    spec = importlib.util.spec_from_file_location(f"qzhou_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for name, table in BLOCKS.items():
        c[name] = _block(table)
    c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))  # (data, fsdp, tensor); -1 takes the rest
    for key, value in TOP.items():
        c[key] = value
    return c
