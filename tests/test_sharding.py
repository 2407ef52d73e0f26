"""One sharding truth: every parameter, optimizer leaf and batch field gets the spec the rules say, on meshes
(8,1,1), (1,8,1), (2,2,2) and one where a rule cannot divide; meshes are laid out by mesh_utils."""
import logging
import typing
import os
import math

import flax
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from qzhou_jax import batch as batch_lib, sharding
from qzhou_jax.train import optim
from qzhou_jax import model as qmodel
from qzhou_jax.train.step import abstract_state

CFG = qmodel.ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=64)
# The documented parameter layout (model/qwen2.py docstring), written out independently of the Flax metadata.
LAYOUT = {
    "embedding": ("vocab", "embed"),
    "norm/scale": ("norm",),
    "layers/input_layernorm/scale": ("layers", "norm"),
    "layers/post_attention_layernorm/scale": ("layers", "norm"),
    "layers/self_attn/q_proj/kernel": ("layers", "embed", "heads", "head_dim"),
    "layers/self_attn/q_proj/bias": ("layers", "heads", "head_dim"),
    "layers/self_attn/k_proj/kernel": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/self_attn/k_proj/bias": ("layers", "kv_heads", "head_dim"),
    "layers/self_attn/v_proj/kernel": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/self_attn/v_proj/bias": ("layers", "kv_heads", "head_dim"),
    "layers/self_attn/o_proj/kernel": ("layers", "heads", "head_dim", "embed"),
    "layers/mlp/gate_proj/kernel": ("layers", "embed", "mlp"),
    "layers/mlp/up_proj/kernel": ("layers", "embed", "mlp"),
    "layers/mlp/down_proj/kernel": ("layers", "mlp", "embed"),
}
SIZES = dict(vocab=128, embed=32, norm=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp=64)
# Which mesh axis splits each weight axis (ZeRO-3 over fsdp, Megatron over tensor), when it divides.
WEIGHT_AXIS = dict(vocab="tensor", embed="fsdp", heads="tensor", kv_heads="tensor", mlp="tensor")
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]  # (1, 2, 4): 2 KV heads cannot split over tensor 4


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def expected_shard_shape(names, mesh_shape):
    sizes = dict(zip(sharding.MESH_AXES, mesh_shape))
    out = []
    for name in names:
        axis = WEIGHT_AXIS.get(name)
        split = sizes[axis] if axis and SIZES[name] % sizes[axis] == 0 else 1
        out.append(SIZES[name] // split)
    return tuple(out)


def _tx(accum=1):
    cfg = ConfigDict(dict(lr=1e-3, warmup_steps=1, decay="linear", final_lr_ratio=0.0, b1=0.9, b2=0.999,
                          eps=1e-8, weight_decay=0.01, grad_clip=1.0, grad_accum_steps=accum))
    return optim.make_optimizer(cfg, 10)[0]


def _rules(mesh_shape):
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:math.prod(mesh_shape)])
    return sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(CFG))


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_every_param_and_optimizer_leaf_gets_its_spec(mesh_shape):
    rules = _rules(mesh_shape)
    state, shardings = abstract_state(CFG, _tx(accum=2), rules)  # MultiSteps: moments and accumulated grads
    params = {_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
    assert set(params) == set(LAYOUT)
    for path, names in LAYOUT.items():
        assert params[path].shard_shape(tuple(SIZES[n] for n in names)) == expected_shard_shape(names, mesh_shape), \
            (mesh_shape, path, params[path].spec)
    moments = 0
    for p, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]:
        path = _path(p)
        suffix = [k for k in LAYOUT if path.endswith("/" + k) or path.endswith("'" + k) or path.endswith(k)]
        if suffix:  # a moment / accumulator of a parameter: exactly that parameter's sharding
            assert s.spec == params[max(suffix, key=len)].spec, (path, s.spec)
            moments += 1
        else:  # step counters and non-finite counters
            assert s.spec == P(), (path, s.spec)
    assert moments == 3 * len(LAYOUT)  # mu, nu, acc_grads
    assert shardings.step.spec == P()
    # The abstract state carries the same shardings (what train.py restores into and plan.py compiles).
    assert jax.tree.leaves(jax.tree.map(lambda a, s: a.sharding == s, state, shardings)) == \
        [True] * len(jax.tree.leaves(shardings))


def test_a_rule_that_cannot_divide_is_dropped_once_for_weights_and_activations(caplog):
    with caplog.at_level(logging.INFO, logger="qzhou_jax.sharding"):
        rules = _rules((1, 2, 4))
    assert dict(rules.params)["kv_heads"] is None and dict(rules.activations)["kv_heads"] is None
    assert dict(rules.params)["heads"] == "tensor"  # 4 heads do divide
    assert [r.getMessage() for r in caplog.records if "does not divide" in r.getMessage()] == \
        ["sharding rule does not divide kv_heads (size 2) over tensor (4): replicated"]
    assert ("kv_heads", None) in rules.logical_axis_rules()


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_every_batch_field_is_split_over_the_batch_axes(mesh_shape):
    rules = _rules(mesh_shape)
    batch_devices = mesh_shape[0] * mesh_shape[1]
    for task in ("retrieval", "pair_score", "classification"):
        abstract = batch_lib.abstract(task, batch_size=16, num_candidates=3, query_len=8, passage_len=12,
                                      rules=rules)
        for name, leaf in abstract.present().items():
            field = batch_lib.FIELDS[name]
            assert len(leaf.shape) == len(field.axes) and leaf.dtype == np.dtype(field.dtype)
            assert leaf.sharding.shard_shape(leaf.shape) == (16 // batch_devices,) + leaf.shape[1:], (name,)
        assert (abstract.score is not None) == (task == "pair_score")
        assert (abstract.labels is not None) == (task == "classification")


def test_a_batch_that_cannot_split_is_an_error_naming_the_axis():
    rules = _rules((8, 1, 1))
    with pytest.raises(ValueError, match=r"axis 'batch' of size 6 cannot be split .* \(8 devices\)"):
        batch_lib.abstract("retrieval", batch_size=6, num_candidates=2, query_len=4, passage_len=4, rules=rules)


def test_host_batch_is_checked_against_the_table():
    good = {"anchor_ids": np.zeros((2, 3), np.int32), "anchor_mask": np.ones((2, 3), np.int32),
            "cand_ids": np.zeros((2, 1, 3), np.int32), "cand_mask": np.ones((2, 1, 3), np.int32),
            "cand_valid": np.ones((2, 1), bool), "dataset_id": np.zeros(2, np.int32), "task": "retrieval"}
    batch = batch_lib.Batch.from_host(good)
    assert batch.score is None and batch.size == 2 and len(jax.tree.leaves(batch)) == 5
    assert batch.task == "retrieval" and batch_lib.Batch.from_host(good, task=None).task == "retrieval"
    assert [int(x) for x in batch.count_tokens()] == [6, 6]
    with pytest.raises(KeyError, match="unknown field.*'anchor_lang'.*FIELDS"):
        batch_lib.Batch.from_host({**good, "anchor_lang": np.zeros(2, np.uint32)})
    with pytest.raises(KeyError, match="required field 'cand_valid'"):
        batch_lib.Batch.from_host({k: v for k, v in good.items() if k != "cand_valid"})
    with pytest.raises(ValueError, match="'cand_ids' must have rank 3"):
        batch_lib.Batch.from_host({**good, "cand_ids": np.zeros((2, 3), np.int32)})
    with pytest.raises(TypeError, match="'anchor_mask' must be int32, got float32"):
        batch_lib.Batch.from_host({**good, "anchor_mask": np.ones((2, 3), np.float32)})
    # One size per logical axis across fields (checked here once, so the losses need not).
    with pytest.raises(ValueError, match=r"'anchor_ids' \(2, 3\) and 'cand_ids' \(3, 1, 3\) disagree on the batch"):
        batch_lib.Batch.from_host({**good, "cand_ids": np.zeros((3, 1, 3), np.int32)})
    with pytest.raises(ValueError, match="disagree on the length of anchor axis"):
        batch_lib.Batch.from_host({**good, "anchor_mask": np.ones((2, 4), np.int32)})
    with pytest.raises(ValueError, match="'cand_ids' .* and 'labels' .* disagree on the cand axis"):
        batch_lib.Batch.from_host({**good, "labels": np.zeros((2, 3), np.int32)})
    batch_lib.Batch.from_host({**good, "labels": np.zeros((2, 2), np.int32), "cand_hash": np.zeros((2, 1), np.int32)})
    # What the batch's task needs: its loss's fields, CoSENT's single candidate, a known task.
    with pytest.raises(KeyError, match="a classification batch needs field.*'labels'"):
        batch_lib.Batch.from_host(good, task="classification")
    with pytest.raises(KeyError, match="a pair_score batch needs field.*'score'"):
        batch_lib.Batch.from_host(good, task="pair_score")
    two = {**good, "cand_ids": np.zeros((2, 2, 3), np.int32), "cand_mask": np.ones((2, 2, 3), np.int32),
           "cand_valid": np.ones((2, 2), bool), "score": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="pair_score batch has one candidate"):
        batch_lib.Batch.from_host(two, task="pair_score")
    with pytest.raises(ValueError, match="unknown task 'sts'"):
        batch_lib.Batch.from_host(good, task="sts")


def test_adding_a_field_is_a_table_row_and_an_attribute(monkeypatch):
    fields = dict(batch_lib.FIELDS, anchor_lang=batch_lib.Field("uint32", ("batch",), required=False))
    monkeypatch.setattr(batch_lib, "FIELDS", fields)
    with pytest.raises(TypeError, match="differ from batch_schema.py FIELDS"):
        batch_lib.check_declared_fields()  # the row alone: the class must declare it too

    @flax.struct.dataclass
    class Wider(batch_lib.Batch):
        anchor_lang: typing.Any = None
    batch_lib.check_declared_fields(Wider)
    host = {"anchor_ids": np.zeros((8, 3), np.int32), "anchor_mask": np.ones((8, 3), np.int32),
            "cand_ids": np.zeros((8, 1, 3), np.int32), "cand_mask": np.ones((8, 1, 3), np.int32),
            "cand_valid": np.ones((8, 1), bool), "anchor_lang": np.arange(8, dtype=np.uint32)}
    batch = Wider.from_host(host)
    monkeypatch.setattr(batch_lib, "Batch", Wider)
    shardings = batch_lib.shardings(_rules((1, 8, 1)), batch)
    assert shardings.anchor_lang.spec == P(("data", "fsdp"))


def test_make_mesh_lays_out_devices_with_mesh_utils(monkeypatch, caplog):
    calls = []
    real = sharding.mesh_utils.create_device_mesh

    def spy(shape, devices, **kwargs):
        calls.append((tuple(shape), kwargs.get("allow_split_physical_axes")))
        return real(shape, devices, **kwargs)
    monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", spy)
    mesh = sharding.make_mesh((2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2} and calls == [((2, 2, 2), False)]

    def refuse(shape, devices, **kwargs):
        raise ValueError("no physical layout")
    monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", refuse)
    with caplog.at_level(logging.INFO, logger="qzhou_jax.sharding"):
        mesh = sharding.make_mesh((1, 4, 1), jax.devices()[:4])
    assert list(mesh.devices.ravel()) == jax.devices()[:4]
    assert any("plain device order" in r.getMessage() and "no physical layout" in r.getMessage()
               for r in caplog.records)


def test_make_mesh_on_a_tpu_topology_follows_the_torus():
    topologies = pytest.importorskip("jax.experimental.topologies")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: other libtpu users may be running
    try:
        devices = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x2").devices
    except Exception as e:  # noqa: BLE001 - libtpu missing or unusable here
        pytest.skip(f"no libtpu topology: {e}")
    mesh = sharding.make_mesh((1, -1, 2), devices)
    expected = sharding.mesh_utils.create_device_mesh((1, 4, 2), devices)
    assert [d.id for d in mesh.devices.ravel()] == [d.id for d in expected.ravel()]
    # The tensor axis pairs physical neighbours (one hop apart on the torus).
    for pair in mesh.devices.reshape(-1, 2):
        assert sum(abs(a - b) for a, b in zip(pair[0].coords, pair[1].coords)) + \
            abs(pair[0].core_on_chip - pair[1].core_on_chip) == 1
