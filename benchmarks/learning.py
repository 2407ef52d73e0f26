"""Why does from-scratch CoSENT not learn? Measures, side by side per variant, what the pair-score loss sees.

For each variant (instruction prompt on both sides or not; CoSENT temperature; learning rate) it prints, on STS-B
from the small model's random init and after `--steps` CoSENT-only AdamW steps on STS-B train:
  - sim_spread (std of the pair cosines of a batch, the metric the losses log) and their range,
  - the mean cosine between *unrelated* texts (how much every embedding shares),
  - the CoSENT loss against the collapsed value log(1 + #ordered pairs) (all cosines equal),
  - Spearman on STS-B test pairs (the evaluation's score, same prompting as the variant).

    nice -n 10 python benchmarks/learning.py --steps 40 --variants prompt,plain --json out.json

Numbers and conclusions: docs/learning.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from qzhou_jax import losses, model as qmodel  # noqa: E402
from qzhou_jax.batch import Batch  # noqa: E402
from qzhou_jax.train import optim  # noqa: E402
from qzhou_jax.data import presets, shared_data  # noqa: E402
from qzhou_jax.tokenizer import format_query, load_tokenizer, tokenize  # noqa: E402

def _texts(pairs, prompt: bool):
    instruction = presets.INSTRUCTIONS["sts"] if prompt else None
    return ([format_query(p.text_a, instruction) for p in pairs], [format_query(p.text_b, instruction) for p in pairs])


def _tok(tokenizer, texts, max_len):
    t = tokenize(tokenizer, texts, max_len, padding_side="right", pad_to=max_len)  # one shape: one compile
    return jnp.asarray(t["input_ids"]), jnp.asarray(t["attention_mask"])


def measure(embed, params, tokenizer, pairs, prompt, tau, max_len, batch=64):
    """Spread, shared component, loss vs collapsed and Spearman of `pairs` (batches of `batch`)."""
    a_txt, b_txt = _texts(pairs, prompt)
    a = np.concatenate([np.asarray(embed(params, *_tok(tokenizer, a_txt[i:i + batch], max_len)))
                        for i in range(0, len(pairs), batch)])
    b = np.concatenate([np.asarray(embed(params, *_tok(tokenizer, b_txt[i:i + batch], max_len)))
                        for i in range(0, len(pairs), batch)])
    cos = np.sum(a * b, axis=1)
    gold = np.array([p.score for p in pairs], dtype=np.float32)
    unrelated = a @ np.roll(b, 1, axis=0).T  # a_i vs b_j, j != i (mostly unrelated sentences)
    spreads, loss, collapsed = [], [], []
    for i in range(0, len(pairs) - batch + 1, batch):
        lo, m = losses.task_loss(jnp.asarray(a[i:i + batch]), jnp.asarray(b[i:i + batch])[:, None],
                                 Batch(score=jnp.asarray(gold[i:i + batch]), task="pair_score"),
                                 losses.LossConfig(cosent_tau=tau))
        spreads.append(float(m["sim_spread"]))
        loss.append(float(lo))
        collapsed.append(float(np.log1p(m["num_ordered_pairs"])))
    return dict(sim_spread=float(np.mean(spreads)), cos_min=float(cos.min()), cos_max=float(cos.max()),
                unrelated_mean_cos=float(np.mean(unrelated)), cosent_loss=float(np.mean(loss)),
                collapsed_loss=float(np.mean(collapsed)), spearman=float(spearmanr(cos, gold).statistic))


def train_cosent(embed, params, tokenizer, pairs, *, prompt, tau, lr, steps, max_len, batch=64, seed=0):
    cfg = ml_collections.ConfigDict(dict(lr=lr, warmup_steps=min(10, steps), decay="constant", final_lr_ratio=0.0,
                                         b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0,
                                         grad_accum_steps=1))
    tx, _ = optim.make_optimizer(cfg, steps)
    loss_config = losses.LossConfig(cosent_tau=tau)

    def loss_fn(p, a_ids, a_mask, b_ids, b_mask, score):
        a, b = embed(p, a_ids, a_mask), embed(p, b_ids, b_mask)
        return losses.task_loss(a, b[:, None], Batch(score=score, task="pair_score"), loss_config)

    @jax.jit
    def step(p, opt_state, *batch_arrays):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, *batch_arrays)
        p, opt_state = optim.apply_gradients(tx, grads, opt_state, p)
        return p, opt_state, metrics

    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    a_txt, b_txt = _texts(pairs, prompt)
    history = []
    for _ in range(steps):
        idx = rng.choice(len(pairs), size=batch, replace=False)
        score = jnp.asarray([pairs[i].score for i in idx], dtype=jnp.float32)
        params, opt_state, m = step(params, opt_state, *_tok(tokenizer, [a_txt[i] for i in idx], max_len),
                                    *_tok(tokenizer, [b_txt[i] for i in idx], max_len), score)
        history.append({k: float(m[k]) for k in ("loss", "sim_spread", "pair_accuracy")})
    return params, history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", default="prompt,plain", help="comma list of prompt|plain")
    parser.add_argument("--taus", default="0.05", help="comma list of CoSENT temperatures")
    parser.add_argument("--lrs", default="1e-3", help="comma list of learning rates")
    parser.add_argument("--eval-pairs", type=int, default=256, help="STS-B test pairs measured")
    parser.add_argument("--max-len", type=int, default=48)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    config = qmodel.preset(args.preset, dtype="float32", remat_policy="none")
    embed = jax.jit(lambda p, ids, mask: qmodel.embed_tokens(p, config, ids, mask))
    init = qmodel.init_params(config, jax.random.key(0))
    tokenizer = load_tokenizer()
    train = shared_data.read_sts("stsb", "train")
    test = shared_data.read_sts("stsb", "test")[: args.eval_pairs]
    rows = []
    for variant in args.variants.split(","):
        prompt = variant == "prompt"
        for tau in map(float, args.taus.split(",")):
            before = measure(embed, init, tokenizer, test, prompt, tau, args.max_len)
            for lr in map(float, args.lrs.split(",")):
                start = time.perf_counter()
                params, history = train_cosent(embed, init, tokenizer, train, prompt=prompt, tau=tau, lr=lr,
                                               steps=args.steps, max_len=args.max_len)
                after = measure(embed, params, tokenizer, test, prompt, tau, args.max_len)
                row = dict(variant=variant, tau=tau, lr=lr, steps=args.steps, before=before, after=after,
                           train_loss_first5=float(np.mean([h["loss"] for h in history[:5]])),
                           train_loss_last5=float(np.mean([h["loss"] for h in history[-5:]])),
                           train_spread_last5=float(np.mean([h["sim_spread"] for h in history[-5:]])),
                           seconds=time.perf_counter() - start)
                rows.append(row)
                print(f"{variant:6s} tau={tau:<5g} lr={lr:<6g} | init: spread {before['sim_spread']:.4f} "
                      f"unrelated cos {before['unrelated_mean_cos']:.3f} loss {before['cosent_loss']:.3f} "
                      f"(collapsed {before['collapsed_loss']:.3f}) spearman {before['spearman']:.3f} | "
                      f"{args.steps} steps: train loss {row['train_loss_first5']:.3f} -> {row['train_loss_last5']:.3f}"
                      f" spread {after['sim_spread']:.4f} unrelated cos {after['unrelated_mean_cos']:.3f} "
                      f"test loss {after['cosent_loss']:.3f} spearman {after['spearman']:.3f} "
                      f"({row['seconds']:.0f} s)", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
