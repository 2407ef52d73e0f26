"""Mining end to end: rows -> corpus -> cached embeddings -> sharded exact search -> selection -> rows.

`mine(MineConfig(...))` is what the CLI (qzhou_jax/cli/mine.py) and the between-stages hook (stages.py) call. Every
process runs it; each encodes its share of the chunks, all take part in the search, process 0 writes OUT.jsonl
(atomically) and OUT.jsonl.stats.json (counts, timings, throughput).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sys
import time

import jax
import numpy as np

from qzhou_jax import atomic
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.mining import cache as mcache
from qzhou_jax.mining.corpus import build_corpus, read_corpus_file, read_rows
from qzhou_jax.mining.model import load_encoder, model_fingerprint
from qzhou_jax.mining.search import ShardedSearch, passage_mesh
from qzhou_jax.mining.select import SelectConfig, select
from qzhou_jax.tokenizer import PromptConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MineConfig:
    model: str                      # HF dir, export or training workdir
    input: str                      # FlagEmbedding JSONL
    output: str
    corpus: str | None = None       # extra passages: JSONL {"text"} or BEIR corpus.jsonl
    select: SelectConfig = SelectConfig()
    instruction: str | None = None  # query instruction for rows without their own "prompt"
    prompt_sep: str | None = None   # text after "Query:" (None: the model's own prompt config)
    cache: str | None = None        # embedding cache (default OUTPUT.cache)
    batch_size: int = 32            # encoder batch
    max_length: int = 512           # token limit of queries and passages
    dtype: str = "float32"
    encode_chunk: int = 4096        # passages per cache file
    query_batch: int = 256          # queries per search call
    corpus_chunk: int = 8192        # passages per score block on a device
    num_devices: int = 0            # search on the first N devices (0: all devices of all processes)
    progress: bool = True


def mine(cfg: MineConfig, encoder=None) -> dict:
    t0 = time.time()
    rows = read_rows(cfg.input)
    extra = read_corpus_file(cfg.corpus) if cfg.corpus else ()
    corpus = build_corpus(rows, extra)
    start, end = cfg.select.window
    if cfg.select.depth > len(corpus):
        raise UsageError(f"rank window {start}:{end} (search depth {cfg.select.depth}) is beyond the corpus of "
                         f"{len(corpus)} passages ({cfg.input}" + (f" + {cfg.corpus}" if cfg.corpus else "") + ")")
    encoder = encoder or load_encoder(cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size,
                                      dtype=cfg.dtype)
    prompt = encoder.prompt if cfg.prompt_sep is None else PromptConfig(encoder.prompt.query_template, cfg.prompt_sep)
    fingerprint = model_fingerprint(encoder)
    cache_dir = cfg.cache or cfg.output + ".cache"

    t_encode = time.time()
    passages = mcache.encode_cached(encoder, corpus.model_texts(), cache_dir=cache_dir, label="passages",
                                    model_fingerprint=fingerprint, chunk_size=cfg.encode_chunk,
                                    progress=cfg.progress)
    query_texts = [prompt.format_query(r.query, r.prompt or cfg.instruction) for r in rows]
    queries = mcache.encode_cached(encoder, query_texts, cache_dir=cache_dir, label="queries",
                                   model_fingerprint=fingerprint, chunk_size=cfg.encode_chunk,
                                   progress=cfg.progress)
    t_search = time.time()

    search = ShardedSearch(passages.rows, len(corpus), passages.dim, cfg.select.depth,
                           query_batch=min(cfg.query_batch, len(rows)), corpus_chunk=cfg.corpus_chunk,
                           mesh=passage_mesh(jax.devices()[:cfg.num_devices] if cfg.num_devices else None))
    counts = collections.Counter()
    out_rows = []
    for lo in range(0, len(rows), search.query_batch):
        q = queries.rows(lo, min(lo + search.query_batch, len(rows)))
        top_scores, top_idx = search.search(q)
        for j in range(len(q)):
            i = lo + j
            row = rows[i]
            pos = [corpus.lookup(t) for t in row.positives]
            neg = [corpus.lookup(t) for t in row.negatives]
            pos_scores = passages.take(np.asarray(pos)) @ q[j]
            neg_scores = passages.take(np.asarray(neg)) @ q[j] if neg else np.zeros(0)
            chosen = select(i, top_idx[j], top_scores[j], pos, pos_scores, neg, neg_scores, cfg.select)
            if chosen.dropped:
                counts[f"dropped_{chosen.dropped}"] += 1
                continue
            counts["short"] += chosen.short
            counts["mined_negatives"] += sum(m["source"] == "mined" for m in chosen.meta)
            out_rows.append({**row.fields, "neg": [corpus.texts[k] for k in chosen.negatives],
                             "neg_meta": list(chosen.meta)})
        if cfg.progress:
            done = min(lo + search.query_batch, len(rows))
            rate = done / max(time.time() - t_search, 1e-9)
            print(f"\rsearch: {done}/{len(rows)} queries ({rate:.1f}/s, ETA {(len(rows) - done) / rate:.0f}s)",
                  end="", file=sys.stderr, flush=True)
    if cfg.progress:
        print(file=sys.stderr)

    t_end = time.time()
    stats = dict(rows_in=len(rows), rows_out=len(out_rows), passages=len(corpus),
                 dropped_positive_rank=counts["dropped_positive_rank"],
                 dropped_positive_score=counts["dropped_positive_score"],
                 rows_short_of_negatives=counts["short"], mined_negatives=counts["mined_negatives"],
                 encoded_chunks=passages.encoded_chunks + queries.encoded_chunks,
                 reused_chunks=passages.reused_chunks + queries.reused_chunks,
                 encode_s=round(t_search - t_encode, 3), search_s=round(t_end - t_search, 3),
                 total_s=round(t_end - t0, 3), devices=search.mesh.size, processes=jax.process_count(),
                 passages_per_s=round(len(corpus) / max(t_end - t0, 1e-9), 1))
    if jax.process_index() == 0:
        write_jsonl(cfg.output, out_rows)
        mcache._write_json(cfg.output + ".stats.json", stats)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("mine-written")
    log.info("mined %s: %s", cfg.output, stats)
    return stats


def write_jsonl(path: str, rows) -> None:
    """All rows or nothing: a temporary file, fsynced, renamed over `path`."""
    with atomic.atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
