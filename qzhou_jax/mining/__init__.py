"""Hard-negative mining with the embedding model: corpus, embedding cache, sharded exact search, selection,
re-mining between training stages. Entry points: `run.mine` (CLI: qzhou_jax/cli/mine.py) and
`stages.remine_for_stage` (train.py's multi-stage loop)."""
