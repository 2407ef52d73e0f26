"""CoSENT from a random init leaves collapse (docs/learning.md), with real_small's stage-2 loss and optimizer.

A tiny encoder sees prompted pairs (one shared 8-token "instruction" on both sides, as symmetric tasks are fed):
text_b is text_a with k of its 12 tokens resampled, gold = 12 - k. At init every pair cosine is nearly equal and
the loss sits at log(1 + #ordered pairs), the plateau real_small's stage 2 showed. After a few dozen steps the
spread of the pair cosines must grow, the loss must fall below that plateau, and held-out pairs must rank better.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import spearmanr

from configs import real_small
from qzhou_jax import losses, model as qmodel, optim

LEN, PREFIX, N_TRAIN, N_TEST, BATCH, STEPS = 12, 8, 256, 64, 32, 40


def _pairs(rng, n, vocab, prefix):
    a = rng.integers(10, vocab, size=(n, LEN))
    b = a.copy()
    k = rng.integers(0, LEN + 1, size=n)
    for i in range(n):
        pos = rng.choice(LEN, size=k[i], replace=False)
        b[i, pos] = rng.integers(10, vocab, size=k[i])
    with_prefix = lambda x: np.concatenate([np.broadcast_to(prefix, (n, PREFIX)), x], axis=1).astype(np.int32)
    return with_prefix(a), with_prefix(b), (LEN - k).astype(np.float32)


def test_cosent_from_random_init_leaves_the_collapsed_plateau():
    cfg = real_small.get_config("stage2")
    config = qmodel.preset("tiny", dtype="float32", remat_policy="none")
    params = qmodel.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prefix = rng.integers(10, config.vocab_size, size=PREFIX)
    train_a, train_b, train_gold = _pairs(rng, N_TRAIN, config.vocab_size, prefix)
    test_a, test_b, test_gold = _pairs(rng, N_TEST, config.vocab_size, prefix)
    loss_config = losses.loss_config_from(cfg.loss)
    optim_cfg = cfg.optim.copy_and_resolve_references()
    optim_cfg.warmup_steps = 5
    tx, _ = optim.make_optimizer(optim_cfg, STEPS)

    def embed(p, ids):
        return qmodel.embed_tokens(p, config, ids, jnp.ones_like(ids))

    def loss_fn(p, a, b, gold):
        return losses.task_loss("pair_score", embed(p, a), embed(p, b)[:, None], score=gold, config=loss_config)

    @jax.jit
    def step(p, opt_state, a, b, gold):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, a, b, gold)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, metrics

    def test_cosines(p):
        return np.sum(np.asarray(embed(p, test_a)) * np.asarray(embed(p, test_b)), axis=1)

    init_cos = test_cosines(params)
    opt_state = tx.init(params)
    history = []
    for s in range(STEPS):
        idx = np.random.default_rng(s).choice(N_TRAIN, size=BATCH, replace=False)
        params, opt_state, m = step(params, opt_state, train_a[idx], train_b[idx], train_gold[idx])
        history.append({k: float(v) for k, v in m.items()})
    plateau = np.mean([np.log1p(h["num_ordered_pairs"]) for h in history])
    first, last = history[:3], history[-5:]
    # At init the pairs are collapsed: the loss is the plateau (within 5%) and the spread tiny.
    assert abs(np.mean([h["loss"] for h in first]) - plateau) < 0.05 * plateau
    assert np.mean([h["sim_spread"] for h in last]) > 3 * np.mean([h["sim_spread"] for h in first])
    assert np.mean([h["loss"] for h in last]) < 0.8 * plateau
    trained_cos = test_cosines(params)
    assert spearmanr(trained_cos, test_gold).statistic > spearmanr(init_cos, test_gold).statistic + 0.1
