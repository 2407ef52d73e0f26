"""The response journal: every completed response, appended and fsynced BEFORE it is used, keyed by its request.

A line is {"key": sha256 of the request, "item": source index, "attempt": k, "text": ..., "prompt_tokens": ...,
"completion_tokens": ...}. The key hashes what decides the answer (model, messages, seed, temperature, max_tokens,
the schema name) and nothing secret: the API key is never part of a request body and never written. Whether
response_format was sent is not in the key, so an answer obtained after a json_schema fallback is reused as is.

kill -9 can leave a torn last line (no newline, or half a JSON object): opening the journal cuts it off and
reports it; a malformed line anywhere else is an error naming file and line.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

from qzhou_jax import atomic
from qzhou_jax.cli_errors import UsageError
from qzhou_jax.synthesis.client import Completion

log = logging.getLogger(__name__)


def request_key(body: dict, schema_name: str) -> str:
    decisive = {k: body.get(k) for k in ("model", "messages", "seed", "temperature", "max_tokens")}
    decisive["schema"] = schema_name
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Journal:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, Completion] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "ab")
        self._written = self._synced = 0  # records appended / known durable, this session
        self._sync: asyncio.Future | None = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good_end = 0
        for number, line in enumerate(lines, start=1):
            last = number == len(lines)
            if not line.strip():
                if not last:
                    good_end += len(line) + 1
                continue
            try:
                if last:
                    raise ValueError("no newline")  # a record is complete only with its newline
                record = json.loads(line)
                completion = Completion(record["text"], record.get("prompt_tokens", 0),
                                        record.get("completion_tokens", 0))
                self.entries[record["key"]] = completion
            except (ValueError, KeyError, TypeError) as err:
                if last or all(not rest.strip() for rest in lines[number:]):
                    log.warning("%s:%d: torn last record (%s) from an interrupted run; discarded", self.path,
                                number, err)
                    with open(self.path, "r+b") as f:
                        f.truncate(good_end)
                        f.flush()
                        os.fsync(f.fileno())
                    return
                raise UsageError(f"{self.path}:{number}: malformed journal record ({err})") from None
            good_end += len(line) + 1

    def get(self, key: str) -> Completion | None:
        return self.entries.get(key)

    def _write(self, key: str, item: int, attempt: int, completion: Completion) -> int:
        record = {"key": key, "item": item, "attempt": attempt, "text": completion.text,
                  "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._file.flush()
        self._written += 1
        return self._written

    def put(self, key: str, item: int, attempt: int, completion: Completion) -> None:
        """Appends and fsyncs one record (synchronous callers)."""
        self._synced = self._write(key, item, attempt, completion)
        os.fsync(self._file.fileno())
        self.entries[key] = completion

    async def append(self, key: str, item: int, attempt: int, completion: Completion) -> None:
        """Appends one record and returns once it is on disk. Group commit: one fsync, run in a thread so the event
        loop keeps serving, covers every record written before it started (an fsync per answer caps a run at
        1 / fsync-latency answers per second, ~200/s on a 5 ms disk)."""
        seq = self._write(key, item, attempt, completion)
        while self._synced < seq:
            if self._sync is None:
                self._sync = asyncio.ensure_future(self._fsync())
            await asyncio.shield(self._sync)
        self.entries[key] = completion

    async def _fsync(self) -> None:
        target = self._written
        try:
            await asyncio.to_thread(os.fsync, self._file.fileno())
            self._synced = max(self._synced, target)
        finally:
            self._sync = None

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.entries)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """tmp + fsync + os.replace: the file is either the old one or the complete new one."""
    atomic.write_text(path, text)
