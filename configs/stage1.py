"""Stage 1 of docs/recipe.md section 6: retrieval-only contrastive training of Qwen2.5-7B-Instruct.

    python -m qzhou_jax.train --config configs/stage1.py --workdir /mnt/runs/stage1 \
        --config.model.hf_dir=/mnt/models/Qwen2.5-7B-Instruct

Paper numbers: 32k steps, lr 3e-5, 300 warm-up steps, batch 256 (InfoNCE), tau 0.02, bf16, query/passage
256/1536 tokens, Adam with weight decay 0.01 (unconfirmed). The datasets below are the shared public retrieval
sets as a template: list your own retrieval corpora (FlagEmbedding JSONL, Parquet, TFDS, BEIR) the same way.
"""
from qzhou_jax.config_base import base
from qzhou_jax.data import paper_mix, presets


def get_config(arg: str = ""):
    """arg "" (default): the shared public data, offline; "paper" or "paper:DIR": the paper's mix (configs/
    paper_mix.py) prepared into DIR [prepared/paper_mix]."""
    retrieval = paper_mix.stage_retrieval(
        arg, "stage1.py", lambda: presets.retrieval(max_len_query=256, max_len_passage=1536, num_negatives=4))
    c = base()
    c.model.hf_dir = ""              # set to a local Qwen2.5-7B-Instruct directory
    c.model.preset = "qwen2.5-7b"    # only used when hf_dir is empty (random init: smoke tests)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.mesh.shape = (1, -1, 1)        # FSDP over all chips; e.g. (2, -1, 4) on a large pod
    c.optim.lr = 3e-5
    c.optim.warmup_steps = 300
    c.optim.weight_decay = 0.01
    c.train.steps = 32_000
    c.train.gradcache_chunks = 0     # e.g. 8 to fit batch 256 x (1+4) x 1536 tokens in less HBM
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    c.eval.every = 2000
    c.eval.tasks = ("SciFact", "STSBenchmark")
    c.eval.max_examples = 500
    # Add your own corpora, e.g. dict(name="msmarco", source="jsonl:/data/msmarco_hn.jsonl.gz",
    # task="retrieval", instruction="Given a web search query, retrieve relevant passages ...", num_negatives=4)
    c.data.datasets = retrieval
    c.data.alpha = 0.5
    c.data.batch_size = dict(retrieval=256, pair_score=768, classification=256)
    c.data.buckets = (64, 128, 256, 512, 1024, 1536)
    return c
