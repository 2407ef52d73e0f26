"""Synthesis -> training: a small dataset is paraphrased, the rewrites get generated hard negatives, everything is
decontaminated, and the result trains as its own weighted dataset next to the real one (docs/recipe.md section 4).

    D=workdirs/synth; API="--base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --concurrency 64"
    python -m qzhou_jax.synthesize seed --config configs/synthetic_example.py --dataset trecqa --output $D/seed.jsonl
    python -m qzhou_jax.synthesize paraphrase --input $D/seed.jsonl --output $D/para.jsonl --n 2 $API
    python -m qzhou_jax.synthesize hard_negatives --input $D/para.jsonl --output $D/para_hn.jsonl --n 3 $API
    python -m qzhou_jax.train --config configs/synthetic_example.py:$D --workdir workdirs/synth_train

Both generation steps drop outputs that match any local evaluation task (--decontaminate-tasks all, the default);
the real dataset is decontaminated by its `decontaminate` field. The config argument is the synthesis directory
[workdirs/synth]. Model and schedule: a tiny random model trained on CPU in minutes, as in configs/demo.py.
"""
from qzhou_jax.config.defaults import base

INSTRUCTION = "Given a question, retrieve sentences that answer it"
LENGTHS = dict(max_len_query=48, max_len_passage=96)


def get_config(synth_dir="workdirs/synth"):
    c = base()
    c.model.preset = "demo"
    c.model.dtype = "float32"
    c.model.remat_policy = "none"
    c.mesh.shape = (-1, 1, 1)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 10
    c.train.steps = 60
    c.train.log_every = 10
    c.checkpoint.every = 30
    c.export.dtype = "float32"
    c.eval.tasks = ("TrecQAReranking",)
    c.eval.every = 30
    c.eval.max_examples = 100
    c.eval.max_length = 96
    c.data = dict(
        datasets=[
            # The real seed dataset (also the synthesis input, through `synthesize seed`).
            dict(name="trecqa", source="shared:trecqa", split="train", num_negatives=1, max_examples=300,
                 instruction=INSTRUCTION, decontaminate="all", **LENGTHS),
            # The synthetic set: paraphrased pairs with the source's negatives + 3 generated ones per row. Its own
            # dataset, so it has its own sampling weight (mass = weight * n^alpha) and its own batches.
            dict(name="trecqa_synthetic", source=f"jsonl:{synth_dir}/para_hn.jsonl", task="retrieval",
                 num_negatives=3, weight=0.5, instruction=INSTRUCTION, **LENGTHS),
        ],
        alpha=0.5, eta=None, seed=0, batch_size=dict(retrieval=16, pair_score=32, classification=16),
        buckets=(16, 32, 64, 96), skip_invalid=False,
    )
    return c
