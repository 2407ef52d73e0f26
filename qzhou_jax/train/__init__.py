"""The training run: everything between a config and a trained workdir.

loop (the trainer on one screen: config -> mesh -> state -> data -> steps -> logs / checkpoints / evals -> export;
stages) | step (the jitted step, plain or GradCache, FLOP counting) | optim (AdamW, schedule, clipping, accumulation)
| guards (signals, non-finite and stall guards) | workdir_lock (one run per workdir) | metrics (metrics.jsonl,
TensorBoard, progress lines) | plots | config_check (start-up checks naming the field) | hardware (chip table) |
plan (ahead-of-time planner). Command lines: qzhou_jax/cli/train.py, cli/plan.py; `python -m qzhou_jax.train`.
"""
