"""Demo: a tiny Qwen2-shaped model trained from scratch on slices of the shared data, on CPU in minutes.

    python -m qzhou_jax.train --config configs/demo.py --workdir workdirs/demo            # stage 1 then 2
    python -m qzhou_jax.train --config configs/demo.py:stage1 --workdir workdirs/demo1    # one stage

Same code path as the real recipe (Grain mixture, sharded jit steps on the local devices, GradCache, Orbax
checkpoints, HF export); only sizes shrink. With the argument "both" (default) it runs stage 1 then stage 2, stage 2
initialised from stage 1's final params, like configs/stage1.py -> configs/stage2.py.
"""
from qzhou_jax.config.defaults import base, stages
from qzhou_jax.data import presets


def retrieval_datasets():
    return presets.retrieval(max_len_query=48, max_len_passage=96, num_negatives=1, max_examples=600,
                             chinese=False)


def other_datasets():
    return (presets.pair_score(max_len=32, max_examples=1500, chinese=False)[:1]
            + presets.classification(max_len=32, num_negatives=1, max_examples=1500)[:1])


def stage1():
    c = base()
    c.model.preset = "demo"
    c.model.dtype = "float32"      # bf16 matmuls are slow on CPU; the real stages use bf16
    c.model.remat_policy = "none"
    c.mesh.shape = (-1, 1, 1)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 10
    c.train.steps = 60
    c.train.log_every = 10
    c.checkpoint.every = 30
    c.checkpoint.keep = 2
    c.export.dtype = "float32"
    c.eval.tasks = ("STSBenchmark", "SciFact")
    c.eval.every = 30
    c.eval.split = ""           # each task's own evaluation split (test): SciFact has no dev split to ask for
    c.eval.max_examples = 200
    c.eval.max_length = 96
    c.data.datasets = retrieval_datasets()
    c.data.batch_size = dict(retrieval=16, pair_score=32, classification=16)
    c.data.buckets = (16, 32, 64, 96)
    return c


def get_config(arg="both"):
    c = stage1()
    if arg == "stage1":
        return c
    c2 = stage1()  # a fresh copy (copy_and_resolve_references would drop the types of None defaults)
    c2.optim.lr = 5e-4
    c2.data.datasets = retrieval_datasets() + other_datasets()
    c2.data.eta = 0.72  # stage 2: 72% of batches from retrieval datasets (docs/recipe.md section 5)
    if arg == "stage2":
        return c2
    if arg != "both":
        raise ValueError(f"configs/demo.py takes 'both', 'stage1' or 'stage2', got {arg!r}")
    # Both stages in one run: workdir/stage1, then workdir/stage2 initialised from stage 1's final params.
    return stages(stage1=c, stage2=c2)
