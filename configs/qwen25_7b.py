"""The block both paper stages share: the model (Qwen2.5-7B-Instruct), its precision and memory settings, the
mesh, length buckets and checkpoint cadence. configs/stage1.py and configs/stage2.py apply it, then set their
own numbers. Not a config file itself (no get_config): loaded beside them with `qzhou_jax.config.defaults.sibling`."""


def apply(c) -> None:
    c.model.hf_dir = ""              # a local Qwen2.5-7B-Instruct directory: architecture config, weights, tokenizer
    c.model.preset = "qwen2.5-7b"    # docs/recipe.md section 1; only used when hf_dir is empty (random init: smoke tests)
    c.model.dtype = "bfloat16"       # docs/recipe.md section 6: bf16
    c.model.param_dtype = "float32"  # master weights
    c.model.remat_policy = "full"
    c.model.attention = "bidirectional"  # docs/recipe.md section 1
    c.model.pooling = "mean"             # docs/recipe.md section 1
    c.mesh.shape = (1, -1, 1)        # FSDP over all chips; e.g. (2, -1, 4) on a large pod
    c.data.buckets = (64, 128, 256, 512, 1024, 1536)  # up to the 1536-token passages (docs/recipe.md section 6)
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    c.eval.max_examples = 500
