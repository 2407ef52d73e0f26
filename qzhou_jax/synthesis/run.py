"""Orchestration: input rows -> items of this shard -> bounded concurrent generation -> checked, de-duplicated,
decontaminated FlagEmbedding rows in input order, plus a summary JSON.

Determinism: a request is a pure function of (item, attempt, what the item accepted so far), its seed is derived
from (--seed, generator, item index, attempt), and every completed answer is journaled (cache.py) before use.
The output is assembled at the end in input order, never in completion order, so a rerun after kill -9 replays
the journal, asks only for what is missing, and writes the same file an uninterrupted run writes.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qzhou_jax.cli_errors import RunFailed, UsageError
from qzhou_jax.data.formats import get_optional_text, get_text, get_text_list
from qzhou_jax.data.sources import read_jsonl
from qzhou_jax.synthesis import decontam, generators, near_dups, prompts
from qzhou_jax.synthesis.cache import Journal, request_key, write_atomic
from qzhou_jax.synthesis.client import AuthError, BudgetExhausted, ChatClient, RequestFailed, parse_json_object

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SynthesisConfig:
    generator: str
    input: str
    output: str
    n: int
    model: str
    base_url: str | None = None        # else $OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_attempts: int = 20
    max_requests: int | None = None
    seed: int = 0
    shard: str = "0/1"                 # "I/N": items with index % N == I
    timeout: float = 120.0
    max_retries: int = 10              # transport retries per request (429 / 5xx / timeout)
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    temperature: float = 0.8
    max_tokens: int | None = None
    structured: bool = True            # ask for json_schema first (falls back on rejection)
    journal: str | None = None         # default OUTPUT.journal.jsonl
    summary: str | None = None         # default OUTPUT.summary.json
    decontaminate_tasks: str = "all"   # local eval tasks ("all", a comma list, or "none")
    decontaminate_files: Sequence[str] = ()
    progress_every: float = 10.0
    max_unusable: int | None = None    # stop after this many unusable answers in a row; None: max(concurrency, 8)

    @property
    def unusable_limit(self) -> int:
        """A wave: as many answers as requests in flight, at least MIN_WAVE (one bad answer must not stop a run)."""
        return max(self.concurrency, MIN_WAVE) if self.max_unusable is None else self.max_unusable


MIN_WAVE = 8


class UnusableAnswers(RunFailed):
    """A whole wave of fresh answers in a row was unusable (no JSON object, no well-formed entry, or the request
    failed after its retries): the server or model cannot do the job, so asking on would only spend requests."""


class Watch:
    """Counts fresh answers in completion order; trips after `limit` unusable ones in a row (0: never).
    Journaled answers replayed on a rerun do not count: the run that paid for them already judged them."""

    def __init__(self, limit: int, on_trip=lambda error: None):
        self.limit, self.streak, self.unusable, self.on_trip = limit, 0, 0, on_trip
        self.reasons: dict[str, int] = {}
        self.tripped: UnusableAnswers | None = None

    def answer(self, usable: bool, reason: str = "") -> None:
        if usable:
            self.streak = 0
            return
        self.streak += 1
        self.unusable += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.limit and self.streak >= self.limit and self.tripped is None:
            causes = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
            self.tripped = UnusableAnswers(
                f"stopped after {self.streak} unusable answers in a row ({causes}): the server or model does not "
                f"answer with the JSON asked for; check --base-url / --model (or --no-structured-output), or "
                f"raise --max-unusable")
            self.on_trip(self.tripped)

    def check(self) -> None:
        if self.tripped is not None:
            raise self.tripped


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be I/N (e.g. 0/4), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {shard}: need 0 <= I < N")
    return index, count


def default_paths(output: str) -> tuple[str, str]:
    return f"{output}.journal.jsonl", f"{output}.summary.json"


def read_items(path: str, shard: tuple[int, int] = (0, 1)) -> tuple[list[generators.Item], int]:
    """This shard's items and the input's row count. A bad row is an error naming file, line and field."""
    items, total = [], 0
    name = Path(path).name
    for index, row in enumerate(read_jsonl(path)):
        total += 1
        if index % shard[1] != shard[0]:
            continue
        f, where = row.fields, row.where
        line = where.rsplit(":", 1)[-1]
        source_id = str(f.get("source_id") or f.get("id") or f"{name}:{line}")
        items.append(generators.Item(
            index=index, source_id=source_id, query=get_text(f, "query", where),
            positive=get_text_list(f, "pos", where, required=True)[0],
            negatives=get_text_list(f, "neg", where, required=False),
            prompt=get_optional_text(f, "prompt", where), upstream=str(f.get("generator") or "")))
    return items, total


def request_seed(seed: int, generator: str, item: generators.Item, attempt: int) -> int:
    digest = hashlib.sha256(f"{seed}|{generator}|{item.index}|{item.source_id}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass
class Counters:
    done: int = 0
    short: int = 0
    failed: dict = dataclasses.field(default_factory=dict)
    attempts: int = 0
    reasked: int = 0           # attempts after an item's first (its earlier answers fell short)
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    accepted: int = 0
    rejected: dict = dataclasses.field(default_factory=dict)
    unusable: int = 0          # fresh answers without a well-formed entry, and failed requests


def _add(counts: dict, other: dict) -> None:
    for k, v in other.items():
        counts[k] = counts.get(k, 0) + v


async def _process(item, gen, cfg, client, journal, counters, watch: Watch) -> generators.Outcome:
    outcome = generators.Outcome([], [])
    rf = prompts.response_format(gen.name)
    for attempt in range(1, cfg.max_attempts + 1):
        need = cfg.n - len(outcome.accepted)
        if need <= 0:
            break
        messages = gen.messages(item, need, outcome.accepted)
        seed = request_seed(cfg.seed, gen.name, item, attempt)
        key = request_key(client.request_body(messages, gen.name, rf, seed), gen.name)
        completion = journal.get(key)
        fresh = completion is None
        if fresh:
            watch.check()  # a tripped run asks nothing more
            completion = await client.complete(messages, rf, seed)
            await journal.append(key, item.index, attempt, completion)  # durable before it is used
            counters.prompt_tokens += completion.prompt_tokens
            counters.completion_tokens += completion.completion_tokens
        else:
            counters.cached += 1
        counters.attempts += 1
        counters.reasked += attempt > 1
        try:
            payload = parse_json_object(completion.text)
        except ValueError:
            outcome.rejected[generators.MALFORMED_JSON] = outcome.rejected.get(generators.MALFORMED_JSON, 0) + 1
            if fresh:
                watch.answer(False, generators.MALFORMED_JSON)
            continue
        if fresh:
            watch.answer(gen.usable(payload), generators.SCHEMA)
        gen.accept(item, payload, outcome, need, attempt)
    return outcome


def _progress_line(gen_name, total, counters, client, start, final=False) -> str:
    elapsed = max(time.time() - start, 1e-9)
    finished = counters.done + counters.short + sum(counters.failed.values())
    rate = finished / elapsed
    eta = (total - finished) / rate if rate > 0 and not final else 0.0
    tokens = counters.prompt_tokens + counters.completion_tokens
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counters.rejected.items()))
    return (f"[synthesize {gen_name}] items {finished}/{total} ({100.0 * finished / max(total, 1):.1f}%) "
            f"accepted {counters.accepted} rejected {sum(counters.rejected.values())}"
            f"{f' ({reasons})' if reasons else ''} failed {sum(counters.failed.values())} | "
            f"requests {client.stats.requests} (+{counters.cached} cached, {client.stats.retried} retried, "
            f"{counters.reasked} re-asked) {client.stats.requests / elapsed:.1f} req/s | "
            f"tokens {tokens} ({tokens / elapsed:.0f}/s) | ETA {eta:.0f}s")


async def generate(cfg: SynthesisConfig, items: list[generators.Item], client: ChatClient, journal: Journal):
    """-> ({item index: Outcome} of finished items, counters, unfinished count, aborted error or None)."""
    gen = generators.get(cfg.generator)
    counters, outcomes = Counters(), {}
    queue = iter(items)
    stop: list[BaseException] = []
    watch = Watch(cfg.unusable_limit, on_trip=client.halt)  # requests waiting for a slot are not sent either
    start = time.time()

    async def worker():
        for item in queue:
            if stop:
                return
            try:
                outcome = await _process(item, gen, cfg, client, journal, counters, watch)
            except (BudgetExhausted, AuthError, UnusableAnswers) as err:
                stop.append(err)
                return
            except RequestFailed as err:
                counters.failed[err.reason] = counters.failed.get(err.reason, 0) + 1
                log.warning("item %s (%s) failed: %s", item.index, item.source_id, err)
                watch.answer(False, f"request_{err.reason}")  # a hanging or failing server stops the run too
                if watch.tripped is not None:
                    stop.append(watch.tripped)
                    return
                continue
            outcomes[item.index] = outcome
            counters.accepted += len(outcome.accepted)
            _add(counters.rejected, outcome.rejected)
            if len(outcome.accepted) >= cfg.n:
                counters.done += 1
            else:
                counters.short += 1

    async def progress():
        while True:
            await asyncio.sleep(cfg.progress_every)
            print(_progress_line(gen.name, len(items), counters, client, start), file=sys.stderr, flush=True)

    reporter = asyncio.create_task(progress())
    try:
        # Twice the concurrency in items keeps every request slot busy while others parse and check.
        await asyncio.gather(*(worker() for _ in range(max(1, 2 * cfg.concurrency))))
    finally:
        reporter.cancel()
    print(_progress_line(gen.name, len(items), counters, client, start, final=True), file=sys.stderr, flush=True)
    unfinished = len(items) - len(outcomes) - sum(counters.failed.values())
    counters.unusable = watch.unusable
    return outcomes, counters, unfinished, (stop[0] if stop else None)


def assemble(items, outcomes, gen_name: str, model: str, d: decontam.Decontaminator | None,
             near_duplicates: bool = True):
    """Rows in input order; exact duplicates (generators.row_key) after their first occurrence dropped, then
    contaminated rows, then (unless `near_duplicates` is False: a shard of a sharded run, whose merge does it)
    near-duplicates of earlier rows (near_dups). -> (rows, duplicates, decontaminated counts, near-duplicates
    dropped or None when left to the merge)."""
    gen = generators.get(gen_name)
    rows = [row for item in items if item.index in outcomes for row in gen.rows(item, outcomes[item.index], model)]
    rows, duplicates = dedup_rows(rows)
    contaminated: dict[str, int] = {}
    if d:
        rows = decontam.filter_rows(rows, d, contaminated)
    near = None
    if near_duplicates:
        rows, near = near_dups.drop_near_duplicates(rows)
    return rows, duplicates, contaminated, near


def dedup_rows(rows: list[dict]) -> tuple[list[dict], int]:
    seen, kept = set(), []
    for row in rows:
        key = generators.row_key(row)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def write_rows(path: str, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def resolve_client_settings(cfg: SynthesisConfig) -> tuple[str, str]:
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise UsageError("no server: pass --base-url or set OPENAI_BASE_URL")
    api_key = os.environ.get(cfg.api_key_env)
    if not api_key:
        log.warning("$%s is not set; sending no API key (fine for a local vLLM / SGLang server)", cfg.api_key_env)
        api_key = "EMPTY"
    return base_url, api_key


def run(cfg: SynthesisConfig, decontaminator: decontam.Decontaminator | None = None) -> dict:
    """Runs one shard to the end (or to --max-requests) and returns its summary (also written as JSON)."""
    generators.get(cfg.generator)
    if cfg.n < 1 or cfg.max_attempts < 1:
        raise UsageError(f"--n and --max-attempts must be >= 1, got {cfg.n} and {cfg.max_attempts}")
    shard = parse_shard(cfg.shard)
    journal_path, summary_path = default_paths(cfg.output)
    journal_path, summary_path = cfg.journal or journal_path, cfg.summary or summary_path
    items, total_rows = read_items(cfg.input, shard)
    if decontaminator is None:
        decontaminator = decontam.build(cfg.decontaminate_tasks, cfg.decontaminate_files)
    base_url, api_key = resolve_client_settings(cfg)
    journal = Journal(journal_path)
    log.info("%s: %d items of %d rows (shard %s), n=%d, %d journaled responses in %s", cfg.generator, len(items),
             total_rows, cfg.shard, cfg.n, len(journal), journal_path)
    start = time.time()

    async def main():
        client = ChatClient(base_url=base_url, api_key=api_key, model=cfg.model, concurrency=cfg.concurrency,
                            timeout=cfg.timeout, max_retries=cfg.max_retries, max_requests=cfg.max_requests,
                            backoff_base=cfg.backoff_base, backoff_cap=cfg.backoff_cap,
                            temperature=cfg.temperature, max_tokens=cfg.max_tokens, structured=cfg.structured,
                            seed=cfg.seed)
        try:
            return await generate(cfg, items, client, journal), client
        finally:
            await client.close()

    try:
        (outcomes, counters, unfinished, stopped), client = asyncio.run(main())
    finally:
        journal.close()
    rows, duplicates, contaminated, near = assemble(items, outcomes, cfg.generator, cfg.model, decontaminator,
                                                    near_duplicates=shard[1] == 1)
    # Complete: every item of this shard got its N outputs. Short items are partial too (a rerun replays the same
    # answers; a higher --max-attempts asks further).
    complete = stopped is None and unfinished == 0 and not counters.failed and not counters.short
    summary = {
        "generator": cfg.generator, "model": cfg.model, "input": cfg.input, "output": cfg.output,
        "shard": cfg.shard, "n": cfg.n, "seed": cfg.seed, "input_rows": total_rows, "items": len(items),
        "items_done": counters.done, "items_short": counters.short, "items_failed": dict(counters.failed),
        "items_unfinished": unfinished, "complete": complete,
        "stopped": None if stopped is None else f"{type(stopped).__name__}: {stopped}",
        "requests": client.stats.requests, "transport_retries": client.stats.retried,
        "retry_causes": dict(client.stats.by_status), "max_in_flight": client.stats.max_in_flight,
        "cached_responses": counters.cached, "attempts": counters.attempts,
        "retried_attempts": counters.reasked,
        "structured_output": client.structured,
        "tokens": {"prompt": counters.prompt_tokens, "completion": counters.completion_tokens},
        "accepted": counters.accepted, "rejected": dict(sorted(counters.rejected.items())),
        "unusable_answers": counters.unusable,
        "duplicates_dropped": duplicates, "near_duplicates_dropped": near,  # None: left to `merge`
        "decontaminated": contaminated, "rows_written": len(rows),
        "elapsed_s": round(time.time() - start, 3),
    }
    write_rows(cfg.output, rows)
    write_atomic(summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if isinstance(stopped, (AuthError, UnusableAnswers)):  # the setup is wrong: everything so far is saved
        raise type(stopped)(f"{stopped}; {shortfall(summary, stopped=False)}; summary in {summary_path}")
    if not complete:
        log.warning("%s", shortfall(summary))
    return summary


def shortfall(summary: dict, stopped: bool = True) -> str:
    """What a partial summary lacks, on one line, and what to do about it ("" when complete)."""
    if summary.get("complete"):
        return ""
    failed = summary.get("items_failed") or {}
    parts = [f"{summary.get('items_done', 0)} of {summary.get('items', 0)} items done"]
    if summary.get("items_short"):
        parts.append(f"{summary['items_short']} short of --n {summary.get('n')} after --max-attempts (raise it to "
                     f"ask further)")
    if failed:
        parts.append(f"{sum(failed.values())} failed ({', '.join(f'{k} {v}' for k, v in sorted(failed.items()))})")
    if summary.get("items_unfinished"):
        parts.append(f"{summary['items_unfinished']} unfinished (rerun the same command: answers already paid for "
                     f"are not asked again)")
    if summary.get("stopped") and stopped:
        parts.append(f"stopped by {summary['stopped']}")
    return f"{summary.get('output')} is partial: {'; '.join(parts)}; {summary.get('rows_written', 0)} rows written"
