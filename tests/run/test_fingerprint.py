"""The state fingerprint: equal to a NumPy brute force, the same however the array is sharded, changed by any
flipped bit."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from qzhou_jax import sharding
from qzhou_jax.run import fingerprint


def numpy_fingerprint(x: np.ndarray) -> list[int]:
    bits = x.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize]).astype(np.uint64).ravel()
    weights = (np.arange(bits.size, dtype=np.uint64) * 2654435761 + 1) % 2**32
    return [int(bits.sum() % 2**32), int((bits * weights % 2**32).sum() % 2**32)]


def test_matches_numpy_for_each_dtype():
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(6, 40)).astype(np.float32), "b": rng.normal(size=(40,)).astype(jnp.bfloat16),
            "n": np.arange(7, dtype=np.int32)}
    got = fingerprint.fingerprint(jax.tree.map(jnp.asarray, tree))
    assert got == {f"['{k}']": numpy_fingerprint(np.asarray(v)) for k, v in tree.items()}


def test_independent_of_sharding_and_sensitive_to_one_bit():
    x = np.random.default_rng(1).normal(size=(16, 24)).astype(np.float32)
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), "tensor")))
    single = fingerprint.fingerprint({"x": jnp.asarray(x)})
    assert fingerprint.fingerprint({"x": sharded}) == single
    flipped = x.copy()
    flipped.view(np.uint32)[5, 7] ^= 1  # the lowest mantissa bit: a norm would not notice
    assert fingerprint.mismatches(single, fingerprint.fingerprint({"x": jnp.asarray(flipped)})) == ["['x']"]
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places: the weighted sum differs
    assert fingerprint.fingerprint({"x": jnp.asarray(swapped)}) != single
