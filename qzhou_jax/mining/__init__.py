"""Hard-negative mining with the embedding model: corpus, embedding cache, sharded exact search, selection,
re-mining between training stages and during a stage. Entry points: `run.mine` (CLI: qzhou_jax/cli/mine.py),
`stages.remine_for_stage` (train/loop.py's multi-stage loop) and `refresh.Refresher` (mine.every, train/loop.py's
loop)."""
