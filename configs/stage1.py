"""Stage 1 of docs/recipe.md section 6: retrieval-only contrastive training of Qwen2.5-7B-Instruct.

    python -m qzhou_jax.train --config configs/stage1.py --workdir /mnt/runs/stage1 \
        --config.model.hf_dir=/mnt/models/Qwen2.5-7B-Instruct

Every number of the recipe is set here, each with its section of docs/recipe.md (which says its source and whether
it is confirmed); the 7B model block is shared with stage 2 (configs/qwen25_7b.py). The datasets below are the
shared public retrieval sets as a template: list your own retrieval corpora (FlagEmbedding JSONL, Parquet, TFDS,
BEIR) the same way.
"""
from qzhou_jax.config.defaults import base, sibling
from qzhou_jax.data import paper_mix, presets


def recipe_numbers(c) -> None:
    """What both stages share of the recipe (stage 2 changes steps, lr and eta)."""
    c.loss.tau = 0.02                # docs/recipe.md section 3 (InfoNCE temperature)
    c.loss.cosent_tau = 0.02         # docs/recipe.md section 3 (unconfirmed: the same tau for CoSENT?)
    c.optim.warmup_steps = 300       # docs/recipe.md section 6
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8  # docs/recipe.md section 6: "Adam", values not stated
    c.optim.weight_decay = 0.01      # docs/recipe.md section 6 (unconfirmed)
    c.optim.decay = "linear"         # docs/recipe.md section 6 (not stated: linear to 0)
    c.optim.final_lr_ratio = 0.0     # docs/recipe.md section 6 (not stated)
    c.optim.grad_clip = 1.0          # docs/recipe.md section 6 (not stated)
    c.data.alpha = 0.5               # docs/recipe.md section 5 (unconfirmed, from GTE)
    # docs/recipe.md section 6: 256 for the InfoNCE tasks, 768 for CoSENT
    c.data.batch_size = dict(retrieval=256, pair_score=768, classification=256)


def get_config(arg: str = ""):
    """arg "" (default): the shared public data, offline; "paper" or "paper:DIR": the paper's mix (configs/
    paper_mix.py) prepared into DIR [prepared/paper_mix]."""
    retrieval = paper_mix.stage_retrieval(  # 256 / 1536 tokens: docs/recipe.md section 6
        arg, "stage1.py", lambda: presets.retrieval(max_len_query=256, max_len_passage=1536, num_negatives=4))
    c = base()
    sibling(__file__, "qwen25_7b").apply(c)
    recipe_numbers(c)
    c.optim.lr = 3e-5                # docs/recipe.md section 6
    c.train.steps = 32_000           # docs/recipe.md section 6
    c.train.gradcache_chunks = 0     # e.g. 8 to fit batch 256 x (1+4) x 1536 tokens in less HBM
    c.eval.every = 2000
    c.eval.tasks = ("SciFact", "STSBenchmark")
    # Add your own corpora, e.g. dict(name="msmarco", source="jsonl:/data/msmarco_hn.jsonl.gz",
    # task="retrieval", instruction="Given a web search query, retrieve relevant passages ...", num_negatives=4)
    c.data.datasets = retrieval      # retrieval only: docs/recipe.md section 6
    return c
