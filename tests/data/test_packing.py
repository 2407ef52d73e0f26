"""Sequence packing: the packed path gives the padded path's embeddings and loss; shapes stay bounded."""
import jax
import numpy as np
import pytest

from qzhou_jax import losses
from qzhou_jax.batch import Batch
from qzhou_jax.train import step as train_step
from qzhou_jax.data import packing
from qzhou_jax.model import init_params, preset

CFG = preset("tiny", attention_impl="xla")
PARAMS = init_params(CFG, jax.random.key(1))
embed_batch = jax.jit(train_step.embed_batch, static_argnums=1)


def padded_batch(seed, b=4, c=3, query_len=64, passage_len=192):
    """Right-padded batch with real-ish lengths: short queries, long-tailed passages, one invalid candidate."""
    rng = np.random.default_rng(seed)
    q_len = np.minimum(rng.integers(4, 40, b), query_len)
    p_len = np.minimum(rng.lognormal(4.0, 0.8, (b, c)).astype(int) + 1, passage_len)
    valid = np.ones((b, c), bool)
    valid[-1, -1] = False
    p_len[~valid] = 0  # the collator's "" filler
    la, lc = int(q_len.max()), int(p_len.max())
    batch = {"anchor_ids": np.zeros((b, la), np.int32), "anchor_mask": np.zeros((b, la), np.int32),
             "cand_ids": np.zeros((b, c, lc), np.int32), "cand_mask": np.zeros((b, c, lc), np.int32),
             "cand_valid": valid, "score": np.zeros(b, np.float32), "labels": -np.ones((b, 1 + c), np.int32),
             "dataset_id": np.zeros(b, np.int32), "task": "retrieval"}
    for i in range(b):
        batch["anchor_ids"][i, :q_len[i]] = rng.integers(1, CFG.vocab_size, q_len[i])
        batch["anchor_mask"][i, :q_len[i]] = 1
        for j in range(c):
            batch["cand_ids"][i, j, :p_len[i, j]] = rng.integers(1, CFG.vocab_size, p_len[i, j])
            batch["cand_mask"][i, j, :p_len[i, j]] = 1
    return batch


def _texts(batch):
    """Each text's real token ids, from the padded layout (the reference)."""
    anchors = [r[m > 0] for r, m in zip(batch["anchor_ids"], batch["anchor_mask"])]
    b, c, lc = batch["cand_ids"].shape
    cands = [r[m > 0] for r, m in zip(batch["cand_ids"].reshape(-1, lc), batch["cand_mask"].reshape(-1, lc))]
    return anchors, cands


def test_pack_batch_lays_out_every_text_once_within_budget():
    batch = padded_batch(0, b=8, c=5)
    packed = packing.pack_batch(batch, row_length=256, row_multiple=4)
    ids, seg, lengths = packed["packed_ids"], packed["packed_segment_ids"], packed["packed_segment_lengths"]
    rows, s = lengths.shape
    assert rows % 4 == 0 and ids.shape == seg.shape == (rows, 256)
    assert not any(k in packed for k in ("anchor_ids", "cand_ids"))
    anchors, cands = _texts(batch)
    index = np.concatenate([packed["packed_anchor_index"], packed["packed_cand_index"].reshape(-1)])
    for text, flat in zip(anchors + cands, index):
        if len(text) == 0:
            assert flat == -1
            continue
        r, k = divmod(int(flat), s)
        np.testing.assert_array_equal(ids[r][seg[r] == k + 1], text)
        assert lengths[r, k] == len(text)
    real = index[index >= 0]
    assert len(set(real.tolist())) == len(real)  # no two texts share a segment
    assert (seg > 0).sum() == sum(map(len, anchors + cands))  # nothing else in the rows
    assert padding_is_lower(batch, packed)


def padding_is_lower(padded, packed):
    return packing.padding_fraction(packed) < packing.padding_fraction(padded)


def _loss(a, c, batch):
    return losses.task_loss(a, c, batch, losses.LossConfig())[0]


def _loss_fn(cfg):
    def loss_fn(params, b):
        a, c = train_step.embed_batch(params, cfg, b)
        return _loss(a, c, b), (a, c)
    return loss_fn


@pytest.mark.parametrize("attention,pooling", [("bidirectional", "mean"), ("causal", "last")])
def test_packed_embeddings_and_loss_equal_padded(attention, pooling):
    cfg = CFG.replace(attention=attention, pooling=pooling)
    batch = padded_batch(1)
    packed = packing.pack_batch(batch, row_length=256)
    assert packed["packed_ids"].shape[0] < 4 * 4  # really packed: fewer rows than texts
    loss = jax.jit(_loss_fn(cfg))
    l0, (a0, c0) = loss(PARAMS, Batch.from_host(batch))
    l1, (a1, c1) = loss(PARAMS, Batch.from_host(packed))
    np.testing.assert_allclose(a1, a0, atol=1e-5)
    valid = batch["cand_valid"]  # an invalid "" candidate: 0 packed; padded mean pooling gives 0 too, last not
    np.testing.assert_allclose(np.asarray(c1)[valid], np.asarray(c0)[valid], atol=1e-5)
    assert np.abs(np.asarray(c1)[~valid]).max() == 0
    if pooling == "mean":
        assert np.abs(np.asarray(c0)[~valid]).max() == 0
    assert abs(float(l1) - float(l0)) <= 1e-5
    np.testing.assert_array_equal([int(t) for t in Batch.from_host(packed).count_tokens()],
                                  [int(t) for t in Batch.from_host(batch).count_tokens()])


@pytest.mark.slow
def test_packed_gradients_equal_padded():
    batch = padded_batch(3)
    packed = packing.pack_batch(batch, row_length=256)
    grad = jax.jit(jax.grad(lambda p, b: _loss_fn(CFG)(p, b)[0]))
    g0, g1 = grad(PARAMS, Batch.from_host(batch)), grad(PARAMS, Batch.from_host(packed))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):  # fp32 sums in another order: relative to scale
        assert np.abs(np.asarray(x) - np.asarray(y)).max() <= 2e-5 * np.abs(np.asarray(y)).max() + 1e-7


def test_segments_do_not_leak():
    batch = padded_batch(2)
    packed = packing.pack_batch(batch, row_length=256)
    a0, c0 = embed_batch(PARAMS, CFG, Batch.from_host(packed))
    # Perturb one token of candidate (0, 0); the layout is unchanged (same lengths).
    r, k = divmod(int(packed["packed_cand_index"][0, 0]), packed["packed_segment_lengths"].shape[1])
    neighbours = packed["packed_segment_ids"][r] > 0
    assert len(set(packed["packed_segment_ids"][r][neighbours].tolist())) > 1  # it shares its row
    perturbed = dict(packed, packed_ids=packed["packed_ids"].copy())
    pos = np.flatnonzero(packed["packed_segment_ids"][r] == k + 1)[0]
    perturbed["packed_ids"][r, pos] = (perturbed["packed_ids"][r, pos] + 7) % CFG.vocab_size
    a1, c1 = embed_batch(PARAMS, CFG, Batch.from_host(perturbed))
    changed = np.abs(np.asarray(c1) - np.asarray(c0)).max(-1)
    assert changed[0, 0] > 1e-3
    changed[0, 0] = 0
    assert changed.max() == 0 and np.abs(np.asarray(a1) - np.asarray(a0)).max() == 0


def test_shapes_stay_within_the_bounded_set():
    shapes = set()
    for seed in range(60):
        packed = packing.pack_batch(padded_batch(seed, b=16, c=4), row_length=256, row_multiple=2)
        rows, segments = packed["packed_segment_lengths"].shape
        shapes.add((rows, segments))
    ladder = {packing.row_bucket(n, 16 * 5, 2) for n in range(1, 16 * 5 + 1)}
    assert {r for r, _ in shapes} <= ladder
    assert all(s & (s - 1) == 0 for _, s in shapes)  # powers of two
    assert len(ladder) <= 16 and len(shapes) <= 6, shapes


def test_row_bucket_ladder_and_errors():
    for n in range(1, 500):
        rung = packing.row_bucket(n, 500, 8)
        assert rung >= n and rung % 8 == 0 and rung <= 504
        assert rung <= max(8, n * packing.ROW_RATIO + 8)  # waste bounded by the ratio (plus rounding)
    with pytest.raises(ValueError, match="does not fit a packed row of 64"):
        packing.pack_batch(padded_batch(0), row_length=64)


@pytest.mark.parametrize("chunks", [2, 4])
def test_gradcache_over_packed_rows_equals_plain_packed_and_padded(chunks):
    """GradCache chunks packed rows (not examples); loss and gradients equal the unchunked packed step's and the
    padded step's. Row lengths are short so that every row holds several examples' texts."""
    batch = padded_batch(5, b=6, c=3)
    packed = packing.pack_batch(batch, row_length=256, row_multiple=chunks)
    rows = packed["packed_ids"].shape[0]
    assert rows % chunks == 0 and rows >= chunks
    loss_config = losses.LossConfig()
    plain = jax.jit(lambda p, b: train_step.plain_loss_and_grads(p, CFG, loss_config, b))
    cached = jax.jit(lambda p, b: train_step.gradcache_loss_and_grads(p, CFG, loss_config, b, chunks))
    l_pad, m_pad, g_pad = plain(PARAMS, Batch.from_host(batch))
    l_plain, _, g_plain = plain(PARAMS, Batch.from_host(packed))
    l_cache, m_cache, g_cache = cached(PARAMS, Batch.from_host(packed))
    assert abs(float(l_cache) - float(l_plain)) <= 1e-5 and abs(float(l_cache) - float(l_pad)) <= 1e-5
    assert float(m_cache["accuracy"]) == float(m_pad["accuracy"])
    for ref in (g_plain, g_pad):
        for x, y in zip(jax.tree.leaves(g_cache), jax.tree.leaves(ref)):
            assert np.abs(np.asarray(x) - np.asarray(y)).max() <= 2e-5 * np.abs(np.asarray(y)).max() + 1e-7
    odd = packing.pack_batch(batch, row_length=256, row_multiple=1)
    if odd["packed_ids"].shape[0] % 4:
        with pytest.raises(ValueError, match="not divisible by gradcache chunks"):
            train_step.gradcache_loss_and_grads(PARAMS, CFG, loss_config, Batch.from_host(odd), 4)


def test_pipeline_packs_the_same_batches(tmp_path, tokenizer, write_jsonl):
    """data.packing on: the pipeline yields pack_batch of exactly the batches it yields with packing off."""
    import itertools

    import jax
    from qzhou_jax.data.pipeline import build_pipeline

    rng = np.random.default_rng(0)
    words = "the cat dog sat on mat bird flew sky fish swim sea red blue green big small".split()
    sentence = lambda: " ".join(rng.choice(words, size=int(rng.integers(1, 30))))  # noqa: E731
    write_jsonl(tmp_path / "ret.jsonl", [{"query": sentence(), "pos": [sentence()], "neg": [sentence()] * (i % 3)}
                                         for i in range(40)])
    data = dict(datasets=[dict(name="ret", source=f"jsonl:{tmp_path}/ret.jsonl", task="retrieval", num_negatives=2,
                               max_len_query=16, max_len_passage=24)],
                batch_size=dict(retrieval=8), buckets=(8, 16, 24), seed=3, num_threads=1)
    padded, _ = build_pipeline(data, tokenizer, process_index=0, process_count=1)
    packed, _ = build_pipeline({**data, "packing": 32}, tokenizer, process_index=0, process_count=1)
    for want, got in itertools.islice(zip(padded, packed), 3):
        assert got["packed_ids"].shape[0] % jax.local_device_count() == 0
        for key, value in packing.pack_batch(want, 32, jax.local_device_count()).items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    with pytest.raises(ValueError, match="shorter than"):
        build_pipeline({**data, "packing": 20}, tokenizer, process_index=0, process_count=1)
    # Several processes: each host packs its own slice (global_batch.agree_on_packing then stitches the hosts).
    host_padded, _ = build_pipeline(data, tokenizer, process_index=1, process_count=2)
    host_packed, _ = build_pipeline({**data, "packing": 32}, tokenizer, process_index=1, process_count=2)
    want, got = next(iter(host_padded)), next(iter(host_packed))
    assert len(want["dataset_id"]) == 4  # half of the global batch of 8
    for key, value in packing.pack_batch(want, 32, jax.local_device_count()).items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.slow
def test_trainer_with_packing_matches_padded_first_step(tmp_path):
    """train.run on the demo config (8 fake devices) with data.packing: same first-step loss and token count as
    the padded run (fp32), and it keeps training."""
    from qzhou_jax.train import loop as train
    from qzhou_jax.train.metrics import read_metrics

    rows = {}
    for packed, chunks in ((0, 0), (256, 0), (256, 2)):  # (256, 2): GradCache over packed rows
        cfg = train.load_config("configs/demo.py:stage1", [
            "--config.checkpoint.async_save=False", "--config.export.at_end=False", "--config.plot=False",
            "--config.eval.tasks=()", "--config.train.steps=2", "--config.train.log_every=1",
            "--config.model.dtype=float32", "--config.model.remat_policy=none", f"--config.data.packing={packed}",
            f"--config.train.gradcache_chunks={chunks}"])
        train.run(cfg, str(tmp_path / f"{packed}-{chunks}"))
        rows[packed, chunks] = read_metrics(str(tmp_path / f"{packed}-{chunks}"))
    for run in ((256, 0), (256, 2)):
        assert abs(rows[run][0]["loss"] - rows[0, 0][0]["loss"]) <= 1e-4, run
        assert abs(rows[run][0]["grad_norm"] / rows[0, 0][0]["grad_norm"] - 1) <= 1e-4, run
        assert rows[run][0]["tokens_per_s"] > 0 and np.isfinite(rows[run][-1]["loss"])
