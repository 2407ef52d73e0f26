"""LLM-API data synthesis (docs/recipe.md section 4): checked, journaled, resumable, sharded generation.

client.py (OpenAI-compatible async client, retries, concurrency) | prompts.py (EN/ZH prompts, JSON schemas) |
checks.py (the paper's constraints) | generators.py (paraphrase / augment / hard_negatives) | cache.py (response
journal) | decontam.py (evaluation-set overlap) | run.py (orchestration) | merge.py (shards). CLI:
qzhou_jax/cli/synthesize.py.
"""
