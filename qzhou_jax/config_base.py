"""Defaults shared by every training config (configs/*.py start from `base()` and change what differs).

Sections: model, init_from, mesh, loss, optim, train, data, checkpoint, eval, export, mine. Every key can be overridden
on the command line, e.g. `--config.optim.lr=1e-5 --config.mesh.shape="(1,-1,1)"`; unknown keys are rejected.
"""
import ml_collections


def base():
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict(dict(
        hf_dir="",            # HF Qwen2 directory (weights + config.json); empty: a preset with random init
        preset="demo",        # used when hf_dir is empty (qzhou_jax/model/config.py PRESETS)
        tokenizer="",         # tokenizer dir; empty: hf_dir's, else the built-in Qwen2.5 tokenizer
        attention="bidirectional",
        pooling="mean",
        dtype="bfloat16",     # compute dtype (RECIPE 6: bf16)
        param_dtype="float32",  # master weights
        remat_policy="full",  # none | full | dots | dots_no_batch
        scan_layers=True,
    ))
    c.init_from = ""  # stage 2: a stage-1 workdir (params only) or an HF dir

    c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))  # (data, fsdp, tensor); -1 takes the rest

    c.loss = ml_collections.ConfigDict(dict(
        tau=0.02, cosent_tau=0.02, hard_negatives=True, in_batch_docs=True, query_query=True,
        doc_query=False, doc_doc=False, false_negative_margin=ml_collections.FieldReference(None, field_type=float),
        matryoshka_dims=ml_collections.FieldReference(None, field_type=tuple),
    ))

    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-5, warmup_steps=300, decay="linear", final_lr_ratio=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.01, grad_clip=1.0, grad_accum_steps=1,
    ))

    c.train = ml_collections.ConfigDict(dict(
        steps=8000, seed=0, log_every=10, gradcache_chunks=0, max_consecutive_nonfinite=20,
        peak_flops_per_device=0.0,  # 0: looked up from the device kind (TPU v4/v5/v6, A100, H100, ...)
        crash_after_step=0,   # test hook: exit abruptly after this step (0: never)
    ))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every=500, keep=3, keep_best=False, best_metric="", async_save=True,
    ))
    # split "dev" where a task has one (its own split otherwise): the best checkpoint is not picked on test data.
    c.eval = ml_collections.ConfigDict(dict(every=1000, tasks=(), split="dev", max_examples=0, batch_size=64,
                                            max_length=512))
    c.export = ml_collections.ConfigDict(dict(at_end=True, dtype="bfloat16"))
    # Multi-stage configs: re-mine this stage's retrieval datasets with the previous stage's final model before
    # training (qzhou_jax/mining/stages.py). datasets=() mines every retrieval dataset; negatives=0 keeps each
    # dataset's num_negatives; window (10, 30) skips the top 10 and samples up to rank 30 (RECIPE 4);
    # rule "none" | "relative_margin" | "max_score_ratio" with rule_value (e.g. 0.05 / 0.95); min_positive_rank 0
    # and min_positive_score -1 keep every query; max_length 0: each dataset's max_len_passage.
    c.mine = ml_collections.ConfigDict(dict(
        enabled=False, datasets=(), negatives=0, window=(10, 30), keep_existing=False, rule="none", rule_value=0.0,
        min_positive_rank=0, min_positive_score=-1.0, max_length=0, batch_size=32, encode_chunk=4096, seed=0,
    ))
    c.plot = True
    c.distributed = False  # multi-host: call jax.distributed.initialize() (TPU VMs / SLURM fill in the rest)
    return c
