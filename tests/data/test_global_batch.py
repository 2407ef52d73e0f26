import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qzhou_jax.data.global_batch import to_global


def test_to_global_single_process_keeps_values_and_shards_batch_axis():
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, P("data"))
    b = len(devices)
    rng = np.random.default_rng(0)
    batch = {
        "anchor_ids": rng.integers(0, 100, (b, 5)).astype(np.int32),
        "cand_ids": rng.integers(0, 100, (b, 2, 3)).astype(np.int32),
        "cand_valid": rng.random((b, 2)) > 0.5,
        "score": rng.random(b).astype(np.float32),
    }
    out = to_global(batch, sharding)
    for key, value in batch.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        assert out[key].sharding == sharding
        assert len(out[key].addressable_shards) == b
        assert out[key].addressable_shards[0].data.shape[0] == 1


def test_to_global_per_key_sharding_and_text_refused():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shardings = {"a": NamedSharding(mesh, P("data")), "b": NamedSharding(mesh, P())}
    out = to_global({"a": np.arange(8), "b": np.arange(3)}, shardings)
    assert out["b"].sharding.is_fully_replicated
    with pytest.raises(TypeError, match="batch\\['anchor'\\] is list"):
        to_global({"anchor": ["text"]}, shardings["a"])


def test_length_groups_come_from_the_batch_table():
    from qzhou_jax.data.global_batch import _length_groups

    names = ("anchor_ids", "anchor_mask", "cand_ids", "cand_mask", "cand_valid", "score", "dataset_id")
    batch = {k: np.zeros(1) for k in names}
    assert _length_groups(batch) == [["anchor_ids", "anchor_mask"], ["cand_ids", "cand_mask"]]
    assert _length_groups({"score": np.zeros(1)}) == []
