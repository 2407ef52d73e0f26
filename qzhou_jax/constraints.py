"""Activation-sharding constraints by logical axis name, for code that runs inside the jitted step: the model, the
batch's token counts, GradCache's embedding tables. Below the model, the batch schema and sharding.py (which maps
the names onto a mesh), so every one of them may use these; flax only.

Under the trainer's `nn.logical_axis_rules` (sharding.ShardingRules.logical_axis_rules) a constraint pins the
layout; without rules (tests, encode on one device) it is a no-op.
"""
from __future__ import annotations

import flax.linen as nn
import jax


def replicated(x: jax.Array) -> jax.Array:
    """`x` replicated on every device, for a small array that sharded indices look up. The loss compares every
    text with every other, so the segments' embeddings are needed whole anyway, and the lookup is then local. Left
    to itself, SPMD moved rows between devices with collective-permutes (10 more per packed step), and 2-process CPU
    runs (Gloo) hung in such a step without an error, 1 run in 2 under load; 0 of 6 with the lookups local
    (tests/test_multihost.py)."""
    return nn.with_logical_constraint(x, (None,) * x.ndim)
