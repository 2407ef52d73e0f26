"""Training-step throughput: the project's jitted retrieval train step against an equivalent PyTorch step.

    python benchmarks/train_step.py [--model-dir DIR | --hidden 768 --layers 12 --heads 12 --kv-heads 4
                                     --intermediate 2048] [--batch 8 --negatives 1 --query-len 64
                                     --passage-len 128 --steps 5 --dtype float32 --remat none --trainable all]

`--model-dir DIR`: a real HF Qwen2 directory (e.g. SmolLM2 imported by `qzhou_jax.hf.convert`) loaded by both
sides, the batch tokenised with its own tokenizer. Without it, one random Qwen2 checkpoint (real Qwen2.5
vocabulary) is written with `save_pretrained` and loaded by both sides, and the built-in Qwen2.5 tokenizer is used.
Both get the same retrieval batch: B SciFact train claims, each with its relevant abstract and N random other
abstracts as hard negatives, tokenised once and padded to fixed lengths.

JAX: `make_step_fn` (bidirectional encoder, mean pooling, L2 norm, `losses.task_loss` of a retrieval batch, AdamW
from `optim.make_optimizer`, clipping 1.0), on a one-device mesh (-1, 1, 1); compiled ahead of time so that compile time
is reported on its own. PyTorch: transformers' `Qwen2Model` with its bidirectional mask (as tests/oracle.py),
mean pooling, L2 norm, the same InfoNCE written in torch, `torch.optim.AdamW` with the same numbers.
Each side runs in its own fresh process (clean peak RSS, no idle thread pools of the other library) and does one
warm-up step, then `--steps` timed steps (median reported). Both start from the same weights and train on the same
batch every step, so their per-step losses and gradient norms must agree (the loss falls fast: the batch is
memorised): that checks that they run the same computation, optimizer included.

`--remat` (activation rematerialisation; JAX: `ModelConfig.remat_policy`, a remat per decoder layer). PyTorch:
transformers' gradient checkpointing, per decoder layer, non-reentrant (`torch.utils.checkpoint`), for every
policy but `none`. `full` is the same scheme on both sides: each layer keeps only its input and is recomputed in
the backward pass. For `dots` / `dots_no_batch` JAX keeps the layer's matmul outputs (all of them / those without
batch dimensions: the projections, not attention's batched products) and recomputes only the elementwise work;
the PyTorch side approximates that with selective checkpointing (`create_selective_checkpoint_contexts`) that
saves the outputs of `mm` / `addmm` (the projections) and, for `dots`, also of `bmm` and the fused CPU SDPA
kernel. Not the same: SDPA is one fused op in PyTorch (its saved output also holds what JAX recomputes as the
softmax), and what else each framework decides to save or recompute is its own; treat `dots*` ratios as
indicative, `full` and `none` as like for like.

`--trainable top:N` (partial fine-tuning, as configs/smollm2.py): JAX builds the step as `train.py` does
(`ModelConfig.frozen_layers = L - N`: the embedding and the bottom layers run under stop_gradient; only the trainable
part, `model.partition`, is differentiated and has optimizer state). PyTorch: `requires_grad=False` on the embedding and the bottom L - N
layers, AdamW and the gradient clipping over the rest (the final norm trains on both sides). The frozen layers
keep no activations on either side. Model FLOPs then count a forward over all layers and a backward over the top
N only: (L + 2N) / 3L of full training's.
MFU here is model FLOP/s (train_step.flops_per_token x real tokens / step time; recomputation under remat is
not counted) over this machine's fp32 matmul
FLOP/s measured by JAX in the same run (a jitted `--matmul-size`^2 matmul, best of `--matmul-repeats`): what the
same compiler reaches on its best-case op. When the 1-minute load average shows the cores oversubscribed, the
JAX/PyTorch ratios are withheld (common.machine_load). Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ in ("__main__", "__mp_main__") and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/train_step.py` puts benchmarks/, not the repo, on the path

from benchmarks.common import (add_model_args, add_runtime_args, benchmark_checkpoint,  # noqa: E402
                               describe_model, in_fresh_process, load_note, load_torch_qwen2, machine_load,
                               model_summary, peak_rss_mb, ratios, rss_mb, side_by_side_table, synthetic_texts)

TASK = "retrieval"
TAU = 0.02
REMAT = ("none", "full", "dots", "dots_no_batch")  # model.config.REMAT_POLICIES
TABLE = [("step s (median)", "step_s", "{:.3f}"), ("tokens/s (real)", "tokens_per_s", "{:.0f}"),
         ("examples/s", "examples_per_s", "{:.2f}"), ("model GFLOP/s", "model_flops_per_s", "{:.2f}"),
         ("MFU vs matmul peak", "mfu", "{:.3f}"), ("warm-up step s", "warmup_s", "{:.2f}"),
         ("checkpoint load s", "load_s", "{:.2f}"), ("RSS after load MB", "rss_loaded_mb", "{:.0f}"),
         ("peak RSS MB (process)", "peak_rss_mb", "{:.0f}")]


# ------------------------------------------------------------------------------------------------------ batch
def retrieval_texts(batch: int, negatives: int, seed: int = 0) -> tuple[list[tuple[str, str, list[str]]], str]:
    """`batch` (query, positive, hard negatives) triples and where they came from.

    SciFact train split from the shared data folder: one sample per claim (its first relevant abstract), the
    negatives drawn at random (seeded) from abstracts not relevant to it. Synthetic text if the folder is missing.
    """
    from qzhou_jax.data.shared_data import DATA_DIR_ENV, read_beir

    rng = random.Random(seed)
    try:
        corpus, queries, qrels = read_beir("scifact", "train")
    except FileNotFoundError as e:
        print(f"note: {e}; using synthetic text (set {DATA_DIR_ENV})", file=sys.stderr)
        texts = synthetic_texts(batch * (2 + negatives), seed)
        per = 2 + negatives
        return [(texts[i * per], texts[i * per + 1], texts[i * per + 2:(i + 1) * per]) for i in range(batch)], \
            "synthetic"
    doc_ids = sorted(corpus)
    samples = []
    for qid, judged in qrels.items():
        relevant = [d for d, rel in judged.items() if rel > 0]
        if not relevant:
            continue
        negs = []
        while len(negs) < negatives:
            d = rng.choice(doc_ids)
            if d not in judged and d not in negs:
                negs.append(d)
        samples.append((queries[qid], corpus[relevant[0]], [corpus[d] for d in negs]))
        if len(samples) == batch:
            break
    if len(samples) < batch:
        raise ValueError(f"scifact train has only {len(samples)} queries with a relevant document; --batch {batch}")
    return samples, "scifact train (claims, relevant abstracts, random other abstracts as negatives)"


def make_batch(samples, query_len: int, passage_len: int, tokenizer_dir: str | None = None) -> dict[str, np.ndarray]:
    """The project's retrieval batch layout (train_step.embed_batch), padded to fixed lengths, tokenised with
    `load_tokenizer(tokenizer_dir)` (the model directory's tokenizer; the built-in Qwen2.5 one where it has none)."""
    from qzhou_jax.tokenizer import load_tokenizer, tokenize

    tokenizer = load_tokenizer(tokenizer_dir)
    q = tokenize(tokenizer, [s[0] for s in samples], query_len, pad_to=query_len)
    docs = [d for _, pos, negs in samples for d in [pos, *negs]]
    d = tokenize(tokenizer, docs, passage_len, pad_to=passage_len)
    b, c = len(samples), 1 + len(samples[0][2])
    return {"anchor_ids": q["input_ids"], "anchor_mask": q["attention_mask"],
            "cand_ids": d["input_ids"].reshape(b, c, passage_len),
            "cand_mask": d["attention_mask"].reshape(b, c, passage_len),
            "cand_valid": np.ones((b, c), bool)}


# ------------------------------------------------------------------------------------------ machine peak
def matmul_flops(size: int, repeats: int) -> dict:
    """fp32 FLOP/s of a jitted JAX matmul (XLA:CPU, one device as the step uses, all cores) on size x size
    matrices: best and median of `repeats`. The denominator of MFU: same compiler, same threads as the step."""
    _one_cpu_device()
    import jax
    import jax.numpy as jnp

    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    matmul(a, b).block_until_ready()  # compile, thread pool start, page faults
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        rates.append(2 * size ** 3 / (time.perf_counter() - start))
    return {"size": size, "repeats": repeats, "best_flops": max(rates), "median_flops": statistics.median(rates),
            "by": f"jax {jax.__version__} jit fp32"}


def _one_cpu_device() -> None:
    """One CPU device, whatever the parent's XLA_FLAGS say (the test suite fakes 8)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = flags.strip()


def step_flops(config, batch_shapes: dict, tokens_anchor: float, tokens_cand: float) -> float:
    """Model FLOPs of one step: train_step.batch_flops (a forward and a backward pass over every layer, 3x the
    forward) or, with `config.frozen_layers = k` (partial fine-tuning), a forward over all L layers and a backward
    over the top L - k only: (L + 2 (L - k)) / 3L of it. Recomputation under remat is not counted (model FLOPs)."""
    from qzhou_jax.train.step import batch_flops

    layers, frozen = config.num_layers, config.frozen_layers
    return batch_flops(config, batch_shapes, tokens_anchor, tokens_cand) * (layers + 2 * (layers - frozen)) \
        / (3 * layers)


# ------------------------------------------------------------------------------------------------- JAX side
def optim_config(lr: float, weight_decay: float, clip: float):
    """The project's optim block with a constant rate (no warm-up), so both sides take identical updates."""
    from qzhou_jax.config.defaults import base

    cfg = base().optim
    cfg.update(dict(lr=lr, warmup_steps=0, decay="constant", weight_decay=weight_decay, grad_clip=clip))
    return cfg


def _breakdown(state, batch, config, tx, rules, repeats: int) -> dict:
    """Where the step's time goes: the same pieces compiled on their own, median of `repeats` each."""
    import flax
    import jax

    from qzhou_jax import losses, model as qmodel
    from qzhou_jax.train import optim
    from qzhou_jax.train.step import embed_batch, mesh_context, plain_loss_and_grads

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def scoped(fn):
        def run(*args):
            with flax.linen.logical_axis_rules(rules.logical_axis_rules()):
                return fn(*args)
        return jax.jit(run)
    loss_config = losses.LossConfig(tau=TAU)
    with mesh_context(rules.mesh):
        forward = scoped(lambda p, b: embed_batch(p, config, b))
        # As in the step: only the trainable part (model.partition) is differentiated and updated.
        trainable, frozen = qmodel.partition(state.params, config)
        grads_fn = scoped(lambda t, f, b: plain_loss_and_grads(t, config, loss_config, b, frozen=f)[2])
        grads = grads_fn(trainable, frozen, batch)
        # As in the step: params and optimizer state donated (without it every call writes 3 fresh params-sized
        # buffers, and on CPU their page faults cost more than the update), outputs threaded through the repeats.
        update = jax.jit(lambda g, o, p: optim.apply_gradients(tx, g, o, p)[::-1], donate_argnums=(1, 2))
        threaded = [jax.tree.map(jax.numpy.copy, (state.opt_state, trainable))]

        def update_threaded(g):
            threaded[0] = update(g, *threaded[0])
            return threaded[0]
        embedding_grad = scoped(lambda p, b: jax.grad(lambda e: jax.numpy.take(e, b.anchor_ids, axis=0).sum())(
            p["embedding"]))
        return {"forward_s": timed(forward, state.params, batch), "loss_and_grads_s": timed(grads_fn, trainable, frozen,
                                                                                           batch),
                "optimizer_update_s": timed(update_threaded, grads),
                "embedding_dense_grad_s": timed(embedding_grad, state.params, batch),
                "embedding_mb": state.params["embedding"].nbytes / 2**20}


def _trainable_params(params, config) -> int:
    """How many weights the optimizer may move (the trainable part, model.partition)."""
    from qzhou_jax import model as qmodel

    return qmodel.num_trainable(params, config)


def run_jax(model_dir: str, batch: dict, dtype: str, steps: int, lr: float, weight_decay: float, clip: float,
            remat: str = "none", trainable: str = "all", profile: bool = False, scan_layers: bool = True) -> dict:
    _one_cpu_device()
    import jax

    from qzhou_jax import batch as batch_lib, losses, model as qmodel, sharding
    from qzhou_jax.train import optim
    from qzhou_jax.hf.load import load_params
    from qzhou_jax.model import ModelConfig
    from qzhou_jax.model.config import frozen_layers_for
    from qzhou_jax.train.step import abstract_state, create_state, make_step_fn, mesh_context

    start = time.perf_counter()
    config = ModelConfig.from_hf(model_dir, param_dtype="float32", dtype=dtype, remat_policy=remat,
                                 scan_layers=scan_layers)
    config = config.replace(frozen_layers=frozen_layers_for(trainable, config.num_layers))
    mesh = sharding.make_mesh((-1, 1, 1), jax.devices()[:1])
    rules = sharding.ShardingRules.for_params(mesh, *qmodel.abstract_params(config))
    # As train.build_state_and_steps: the optimizer sees the trainable part only (model.partition).
    tx, schedule = optim.make_optimizer(optim_config(lr, weight_decay, clip), total_steps=steps + 1)
    _, st_sh = abstract_state(config, tx, rules)
    typed = batch_lib.Batch.from_host(batch, task=TASK)
    state = jax.jit(lambda p: create_state(p, tx, config), out_shardings=st_sh)(load_params(model_dir, config, st_sh.params))
    device_batch = jax.device_put(typed, batch_lib.shardings(rules, typed))
    jax.block_until_ready((state, device_batch))
    load, rss_loaded = time.perf_counter() - start, rss_mb()

    step = make_step_fn(config=config, loss_config=losses.LossConfig(tau=TAU), tx=tx, schedule=schedule,
                        gradcache_chunks=0, rules=rules, state_shardings=st_sh)
    start = time.perf_counter()
    with mesh_context(mesh):
        compiled = step.jitted_for(device_batch).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start

    step_s, step_losses, grad_norms = [], [], []
    for _ in range(steps + 1):  # the first is the warm-up
        start = time.perf_counter()
        state, metrics = compiled(state, device_batch)
        jax.block_until_ready((state, metrics))
        step_s.append(time.perf_counter() - start)
        step_losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    tokens_anchor = float(batch["anchor_mask"].sum())
    tokens_cand = float((batch["cand_mask"].sum(-1) * batch["cand_valid"]).sum())
    shapes = {k: v.shape for k, v in batch.items()}
    breakdown = _breakdown(state, device_batch, config, tx, rules, steps) if profile else None
    if profile:
        from benchmarks.common import top_ops

        held = [state]  # the step donates its state: thread it through the traced calls

        def one_step():
            held[0], step_metrics = compiled(held[0], device_batch)
            return step_metrics
        breakdown["top_ops"] = top_ops(one_step, compiled.as_text())
    return dict(breakdown=breakdown,
                load_s=load, rss_loaded_mb=rss_loaded, compile_s=compile_s, warmup_s=step_s[0], step_s=step_s[1:],
                losses=step_losses, grad_norms=grad_norms, peak_rss_mb=peak_rss_mb(),
                model_flops=step_flops(config, shapes, tokens_anchor, tokens_cand),
                frozen_layers=config.frozen_layers, remat=config.remat_policy,
                trainable_params=_trainable_params(state.params, config),
                device=str(jax.devices()[0].platform), tokens=int(metrics["tokens"]))


# --------------------------------------------------------------------------------------------- PyTorch side
def torch_retrieval_infonce(q, c, valid, tau: float = TAU):
    """Retrieval InfoNCE as a cross-entropy over [every document of the batch | every other query].

    q [B, E], c [B, C, E] unit vectors, valid [B, C] bool. Row i's target is its positive (column i * C); its own
    hard negatives, every other sample's documents and every other query are the negatives; the diagonal of the
    query-query block and invalid documents are masked out. Written independently of qzhou_jax.losses.
    """
    import torch

    b, n_cand, _ = c.shape
    docs = c.reshape(b * n_cand, -1)
    s_qd = q @ docs.T
    s_qq = (q @ q.T).masked_fill(torch.eye(b, dtype=torch.bool), float("-inf"))
    s_qd = s_qd.masked_fill(~valid.reshape(1, b * n_cand), float("-inf"))
    logits = torch.cat([s_qd, s_qq], dim=1) / tau
    return torch.nn.functional.cross_entropy(logits, torch.arange(b) * n_cand)


def torch_remat_kwargs(remat: str) -> dict:
    """transformers' `gradient_checkpointing_kwargs` for a JAX remat policy (see the module docstring): `full`
    recomputes each layer from its input; `dots` / `dots_no_batch` save matmul outputs (selective checkpointing)."""
    import functools

    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    if remat == "full":
        return {"use_reentrant": False}
    aten = torch.ops.aten
    saved = {aten.mm.default, aten.addmm.default}  # the projections (Linear on [tokens, features])
    if remat == "dots":  # also the batched products: attention (one fused SDPA kernel on CPU)
        saved |= {aten.bmm.default, aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE
    return {"use_reentrant": False,
            "context_fn": functools.partial(create_selective_checkpoint_contexts, policy)}


def run_torch(model_dir: str, batch: dict, dtype: str, steps: int, lr: float, weight_decay: float, clip: float,
              remat: str, trainable: str, threads: int) -> dict:
    import contextlib

    import torch
    import transformers
    from transformers.masking_utils import create_bidirectional_mask

    from qzhou_jax.config.defaults import base
    from qzhou_jax.model.config import frozen_layers_for

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    opt = base().optim
    start = time.perf_counter()
    model = load_torch_qwen2(model_dir, torch.float32)
    model.train()  # attention dropout is 0 in the config: train mode changes nothing numerically
    for layer in model.layers:
        layer.self_attn.is_causal = False  # with the bidirectional mask below
    frozen = frozen_layers_for(trainable, len(model.layers))
    if frozen:  # as model.trainable_mask: the embedding and the bottom layers; the top layers and final norm train
        for module in (model.embed_tokens, *model.layers[:frozen]):
            module.requires_grad_(False)
    if remat != "none":
        model.activation_checkpointing_enable(torch_remat_kwargs(remat))  # per layer (every_n_layers=1)
    # As optim.decay_mask: decay matrices and the embedding, not biases or norm scales.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(opt.b1, opt.b2), eps=opt.eps)
    t = {k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()}
    b, n_cand, lc = t["cand_ids"].shape
    load, rss_loaded = time.perf_counter() - start, rss_mb()
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())

    def embed(ids, mask):
        ids, mask = ids.long(), mask.long()
        with autocast:
            embeds = model.embed_tokens(ids)
            full = create_bidirectional_mask(model.config, embeds, mask)
            hidden = model(inputs_embeds=embeds, attention_mask={"full_attention": full},
                           use_cache=False).last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        q = embed(t["anchor_ids"], t["anchor_mask"])
        c = embed(t["cand_ids"].reshape(b * n_cand, lc), t["cand_mask"].reshape(b * n_cand, lc))
        loss = torch_retrieval_infonce(q, c.reshape(b, n_cand, -1), t["cand_valid"].bool())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return loss.item(), grad_norm.item()

    step_s, step_losses, grad_norms = [], [], []
    for _ in range(steps + 1):  # the first is the warm-up
        start = time.perf_counter()
        loss, grad_norm = train_step()
        step_s.append(time.perf_counter() - start)
        step_losses.append(loss)
        grad_norms.append(grad_norm)
    return dict(load_s=load, rss_loaded_mb=rss_loaded, warmup_s=step_s[0], step_s=step_s[1:], losses=step_losses,
                grad_norms=grad_norms, peak_rss_mb=peak_rss_mb(), threads=threads, frozen_layers=frozen,
                trainable_params=sum(p.numel() for p in params))


# ------------------------------------------------------------------------------------------------------ report
def summarise(side: dict, examples: int, real_tokens: int, model_flops: float, peak_flops: float) -> dict:
    seconds = statistics.median(side["step_s"])
    return {"step_s": seconds, "tokens_per_s": real_tokens / seconds, "examples_per_s": examples / seconds,
            "model_flops_per_s": model_flops / seconds, "mfu": model_flops / seconds / peak_flops,
            "warmup_s": side["warmup_s"], "load_s": side["load_s"], "rss_loaded_mb": side["rss_loaded_mb"],
            "peak_rss_mb": side["peak_rss_mb"], "steps_s": side["step_s"], "losses": side["losses"],
            "grad_norms": side["grad_norms"]}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser, model_dir=True)
    add_runtime_args(parser, dtype_help="compute dtype; weights and optimizer state stay float32 on both sides")
    parser.add_argument("--remat", choices=REMAT, default="none",
                        help="JAX: model.remat_policy; PyTorch: per-layer gradient checkpointing (see above)")
    parser.add_argument("--trainable", default="all",
                        help="all, or top:N (partial fine-tuning: the embedding and the layers below the top N "
                             "frozen, as model.trainable)")
    parser.add_argument("--batch", type=int, default=8, help="queries per step (B)")
    parser.add_argument("--negatives", type=int, default=1, help="hard negatives per query (N)")
    parser.add_argument("--query-len", type=int, default=64)
    parser.add_argument("--passage-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side (median reported)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=True,
                        help="the model's scan over layers (model.scan_layers; on by default, for short TPU "
                             "compiles); --no-scan-layers unrolls them, ~7%% faster steps on XLA:CPU")
    parser.add_argument("--profile", action="store_true",
                        help="also time the JAX step's pieces alone (forward, loss+gradients, AdamW update, the "
                             "dense embedding-table gradient) and list its costliest XLA ops from one traced step")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch, args.query_len, args.passage_len, args.matmul_size, args.matmul_repeats) < 1 \
            or args.negatives < 0:
        parser.error("--steps, --batch, lengths and matmul figures must be >= 1, --negatives >= 0")
    clip = 1.0

    from qzhou_jax.model.config import frozen_layers_for

    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    samples, source = retrieval_texts(args.batch, args.negatives)
    peak = in_fresh_process(matmul_flops, args.matmul_size, args.matmul_repeats)
    with benchmark_checkpoint(args) as (model_dir, info):
        try:
            frozen = frozen_layers_for(args.trainable, info["layers"])
        except ValueError as e:
            parser.error(f"--trainable: {e}")
        batch = make_batch(samples, args.query_len, args.passage_len, model_dir)
        common = (model_dir, batch, args.dtype, args.steps, args.lr, args.weight_decay, clip, args.remat,
                  args.trainable)
        torch_side = in_fresh_process(run_torch, *common, args.threads)
        jax_side = in_fresh_process(run_jax, *common, args.profile, args.scan_layers)
    if not jax_side["frozen_layers"] == torch_side["frozen_layers"] == frozen \
            or jax_side["trainable_params"] != torch_side["trainable_params"]:
        raise AssertionError(f"the sides train different weights: JAX {jax_side['frozen_layers']} frozen layers, "
                             f"{jax_side['trainable_params']} params; PyTorch {torch_side['frozen_layers']}, "
                             f"{torch_side['trainable_params']}")

    tokens_anchor = int(batch["anchor_mask"].sum())
    tokens_cand = int((batch["cand_mask"].sum(-1) * batch["cand_valid"]).sum())
    real_tokens = tokens_anchor + tokens_cand
    padded_tokens = batch["anchor_mask"].size + batch["cand_mask"].size
    if jax_side["tokens"] != real_tokens:
        raise AssertionError(f"JAX step counted {jax_side['tokens']} tokens, the batch holds {real_tokens}")
    flops = jax_side["model_flops"]
    jax_row = summarise(jax_side, args.batch, real_tokens, flops, peak["best_flops"])
    torch_row = summarise(torch_side, args.batch, real_tokens, flops, peak["best_flops"])
    loss_diff = max(abs(a - b) for a, b in zip(jax_side["losses"], torch_side["losses"]))
    norm_rel = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(jax_side["grad_norms"], torch_side["grad_norms"]))
    cores = len(os.sched_getaffinity(0))
    load = machine_load(load_before, os.getloadavg()[0], cores)

    print(f"{describe_model(info)}, {args.dtype} compute, fp32 weights and AdamW state "
          f"(lr {args.lr:g}, weight decay {args.weight_decay:g}, clip {clip:g})")
    trained = (f"top {info['layers'] - frozen} of {info['layers']} layers + final norm (embedding and bottom "
               f"{frozen} layers frozen)" if frozen else "all")
    print(f"trainable: {trained}, {torch_side['trainable_params'] / 1e6:.1f}M params; remat {args.remat} "
          f"(PyTorch: {'none' if args.remat == 'none' else 'per-layer gradient checkpointing'})")
    print(f"retrieval batch from {source}: {args.batch} queries x (1 + {args.negatives}) passages, lengths "
          f"{args.query_len}/{args.passage_len}; {real_tokens} real tokens ({tokens_anchor} query + {tokens_cand} "
          f"passage) of {padded_tokens} padded; model FLOPs/step {flops / 1e9:.4g} G")
    print(f"machine: {cores} CPU cores visible; JAX jit fp32 {args.matmul_size}^2 matmul "
          f"{peak['best_flops'] / 1e9:.1f} GFLOP/s best, {peak['median_flops'] / 1e9:.1f} median of "
          f"{args.matmul_repeats} (the MFU denominator); {load_note(load)}")
    print(f"JAX on {jax_side['device']} (mesh (-1,1,1), 1 device, scan_layers={args.scan_layers}, "
          f"remat_policy={jax_side['remat']}, frozen_layers={jax_side['frozen_layers']}); "
          f"PyTorch {torch_side['threads']} threads, SDPA; "
          f"median of {args.steps} timed steps after one warm-up step")
    print(side_by_side_table(TABLE, jax_row, torch_row, scale={"model_flops_per_s": 1e-9},
                             oversubscribed=load["oversubscribed"]))
    print(f"JAX compile (ahead of time, excluded from the warm-up step): {jax_side['compile_s']:.2f} s")
    if jax_side["breakdown"]:
        bd = jax_side["breakdown"]
        print(f"JAX step pieces alone (median): forward {bd['forward_s']:.3f} s, loss+gradients "
              f"{bd['loss_and_grads_s']:.3f} s, AdamW update {bd['optimizer_update_s']:.3f} s, dense gradient of the "
              f"{bd['embedding_mb']:.0f} MB embedding table {bd['embedding_dense_grad_s']:.3f} s; whole step "
              f"{jax_row['step_s']:.3f} s")
        print("JAX step's costliest XLA ops (thread seconds in one traced step; cores x wall in all):")
        for op in bd["top_ops"]:
            print(f"  {op['thread_s']:7.3f} s  x{op['calls']:<3d} {op['shape']:<24s} {op['source']}")
    print(f"losses    JAX {' '.join(f'{x:.6f}' for x in jax_side['losses'])}")
    print(f"          PyTorch {' '.join(f'{x:.6f}' for x in torch_side['losses'])}  (max |diff| {loss_diff:.2e})")
    print(f"grad norm JAX {' '.join(f'{x:.5f}' for x in jax_side['grad_norms'])}")
    print(f"          PyTorch {' '.join(f'{x:.5f}' for x in torch_side['grad_norms'])}  (max rel diff {norm_rel:.2e})")

    summary = {
        "model": model_summary(info, args.dtype),
        "remat": args.remat, "trainable": args.trainable, "frozen_layers": frozen,
        "trainable_params": torch_side["trainable_params"],
        "data": {"source": source, "batch": args.batch, "negatives": args.negatives, "query_len": args.query_len,
                 "passage_len": args.passage_len, "real_tokens": real_tokens, "query_tokens": tokens_anchor,
                 "passage_tokens": tokens_cand, "padded_tokens": padded_tokens},
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay, "grad_clip": clip, "tau": TAU},
        "model_flops_per_step": flops,
        "matmul_peak": peak, "cores": cores, "steps": args.steps, "load_average": load["load_average"],
        "oversubscribed": load["oversubscribed"],
        "jax": {**jax_row, "compile_s": jax_side["compile_s"], "device": jax_side["device"],
                "breakdown": jax_side["breakdown"]},
        "torch": {**torch_row, "threads": torch_side["threads"]},
        "ratio_jax_over_torch": ratios(jax_row, torch_row, ("step_s", "tokens_per_s", "peak_rss_mb"), load),
        "initial_loss": {"jax": jax_side["losses"][0], "torch": torch_side["losses"][0]},
        "max_loss_diff": loss_diff, "max_grad_norm_rel_diff": norm_rel,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
