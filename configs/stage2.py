"""Stage 2 of docs/recipe.md section 6: all tasks (retrieval 72% of batches, NLI/STS with CoSENT, classification),
initialised from stage 1's final weights.

    python -m qzhou_jax.train --config configs/stage2.py --workdir /mnt/runs/stage2 \
        --config.init_from=/mnt/runs/stage1 --config.model.hf_dir=/mnt/models/Qwen2.5-7B-Instruct

Every number of the recipe is set here or in stage 1's `recipe_numbers` (shared), each with its section of
docs/recipe.md. `init_from` takes a stage-1 workdir (params only, no optimizer state) or an HF directory (e.g. a
stage-1 export); `model.hf_dir` still supplies the architecture config and tokenizer.
"""
from qzhou_jax.config.defaults import REQUIRED, base, sibling
from qzhou_jax.data import paper_mix, presets


def get_config(arg: str = ""):
    """arg "" (default): the shared public data, offline; "paper" or "paper:DIR": the paper's mix (configs/
    paper_mix.py) prepared into DIR [prepared/paper_mix]."""
    retrieval = paper_mix.stage_retrieval(  # 256 / 1536 tokens: docs/recipe.md section 6
        arg, "stage2.py", lambda: presets.retrieval(max_len_query=256, max_len_passage=1536, num_negatives=4))
    c = base()
    sibling(__file__, "qwen25_7b").apply(c)
    sibling(__file__, "stage1").recipe_numbers(c)
    # A stage-1 workdir (or an HF dir): docs/recipe.md section 6. Left unset the run refuses to start (stage 2
    # from the base model by accident is a silent wrong model); --config.init_from=base starts from model.hf_dir.
    c.init_from = REQUIRED
    c.optim.lr = 2e-5                # docs/recipe.md section 6
    c.train.steps = 8_000            # docs/recipe.md section 6
    c.checkpoint.keep_best = True
    c.checkpoint.best_metric = "eval/STSBenchmark/main_score"
    c.eval.every = 1000
    c.eval.tasks = ("SciFact", "STSBenchmark", "Banking77Classification")
    # ":paper": the paper's retrieval mix; pair-score and classification stay the shared sets (the report
    # does not name its NLI/STS/classification sources)
    c.data.datasets = (retrieval
                       + presets.pair_score(max_len=256)
                       + presets.classification(max_len=256, num_negatives=4))
    c.data.eta = 0.72                # docs/recipe.md section 5: retrieval share of batches
    return c
