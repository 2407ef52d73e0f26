"""Stage 2 of docs/recipe.md section 6: all tasks (retrieval 72% of batches, NLI/STS with CoSENT, classification),
initialised from stage 1's final weights.

    python -m qzhou_jax.train --config configs/stage2.py --workdir /mnt/runs/stage2 \
        --config.init_from=/mnt/runs/stage1 --config.model.hf_dir=/mnt/models/Qwen2.5-7B-Instruct

Paper numbers: 8k steps, lr 2e-5, 300 warm-up steps (unconfirmed), batch 256 for InfoNCE tasks and 768 for CoSENT,
tau 0.02, eta = 0.72. `init_from` takes a stage-1 workdir (params only, no optimizer state) or an HF directory
(e.g. a stage-1 export); `model.hf_dir` still supplies the architecture config and tokenizer.
"""
from qzhou_jax.config_base import REQUIRED, base
from qzhou_jax.data import paper_mix, presets


def get_config(arg: str = ""):
    """arg "" (default): the shared public data, offline; "paper" or "paper:DIR": the paper's mix (configs/
    paper_mix.py) prepared into DIR [prepared/paper_mix]."""
    retrieval = paper_mix.stage_retrieval(
        arg, "stage2.py", lambda: presets.retrieval(max_len_query=256, max_len_passage=1536, num_negatives=4))
    c = base()
    c.model.hf_dir = ""              # the base model dir: architecture config and tokenizer
    c.model.preset = "qwen2.5-7b"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    # A stage-1 workdir (or an HF dir). Left unset the run refuses to start (stage 2 from the base model by
    # accident is a silent wrong model); --config.init_from=base starts from model.hf_dir on purpose.
    c.init_from = REQUIRED
    c.mesh.shape = (1, -1, 1)
    c.optim.lr = 2e-5
    c.optim.warmup_steps = 300
    c.optim.weight_decay = 0.01
    c.train.steps = 8_000
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    c.checkpoint.keep_best = True
    c.checkpoint.best_metric = "eval/STSBenchmark/main_score"
    c.eval.every = 1000
    c.eval.tasks = ("SciFact", "STSBenchmark", "Banking77Classification")
    c.eval.max_examples = 500
    # ":paper": the paper's retrieval mix; pair-score and classification stay the shared sets (the report
    # does not name its NLI/STS/classification sources)
    c.data.datasets = (retrieval
                       + presets.pair_score(max_len=256)
                       + presets.classification(max_len=256, num_negatives=4))
    c.data.alpha = 0.5
    c.data.eta = 0.72  # docs/recipe.md section 5: retrieval share 0.72 of batches
    c.data.batch_size = dict(retrieval=256, pair_score=768, classification=256)
    c.data.buckets = (64, 128, 256, 512, 1024, 1536)
    return c
