"""The response journal: every completed response, appended and fsynced BEFORE it is used, keyed by its request.

A line is {"key": sha256 of the request, "item": source index, "attempt": k, "text": ..., "prompt_tokens": ...,
"completion_tokens": ...}. The key hashes what decides the answer (model, messages, seed, temperature, max_tokens,
the schema name) and nothing secret: the API key is never part of a request body and never written. Whether
response_format was sent is not in the key, so an answer obtained after a json_schema fallback is reused as is.

kill -9 can leave a torn last line (no newline, or half a JSON object): opening the journal cuts it off and
reports it; a malformed line anywhere else is an error naming file and line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

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
                raise ValueError(f"{self.path}:{number}: malformed journal record ({err})") from None
            good_end += len(line) + 1

    def get(self, key: str) -> Completion | None:
        return self.entries.get(key)

    def put(self, key: str, item: int, attempt: int, completion: Completion) -> None:
        record = {"key": key, "item": item, "attempt": attempt, "text": completion.text,
                  "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries[key] = completion

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.entries)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """tmp + fsync + os.replace: the file is either the old one or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
