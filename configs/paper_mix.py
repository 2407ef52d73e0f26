"""The paper's training mix (qzhou_jax/data/paper_mix.py) as a data config for `prepare` (needs hub access):

    python -m qzhou_jax.data.prepare --config configs/paper_mix.py --out /data/paper_mix --workers 8
    python -m qzhou_jax.data.prepare --config configs/paper_mix.py:msmarco,nq --out /data/paper_mix   # a subset

Then train with `configs/stage1.py:paper:/data/paper_mix` (or stage2.py:paper:...), which reads the prepared
datasets lazily. Lengths and negatives are the stage configs' (docs/recipe.md section 6): 256 / 1536 tokens, 4 hard negatives.
"""
import ml_collections

from qzhou_jax.data import paper_mix


def get_config(names: str = ""):
    c = ml_collections.ConfigDict()
    c.data = dict(datasets=paper_mix.hub_datasets(256, 1536, 4, names=names.split(",") if names else None),
                  seed=0, batch_size=dict(retrieval=256, pair_score=768, classification=256))
    return c
