"""Model merging: linear (model soup), SLERP, TIES over trained models (workdirs or HF directories), tensor by
tensor. `formulas.py` (the per-tensor methods over param trees, mergekit's formulas), `models.py` (load, check one
architecture, merge, write an export and optionally a params-only checkpoint), `stages.py` (a merge stage of a
staged config, train/loop.py). CLI: `python -m qzhou_jax.merge` (cli/merge.py)."""
from qzhou_jax.merging.formulas import (METHODS, linear, magnitude_trim, merge_trees, scanned_layers, slerp,
                                        ties)

__all__ = ["METHODS", "linear", "magnitude_trim", "merge_trees", "scanned_layers", "slerp", "ties"]
