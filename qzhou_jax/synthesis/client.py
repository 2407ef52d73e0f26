"""An OpenAI-compatible chat-completions client (the `openai` package's AsyncOpenAI) for bulk generation.

  * structured output: `response_format={"type": "json_schema", ...}`; when the server rejects it (400/422 naming
    response_format / json_schema, or any 400/422 to a request carrying it) the client switches to plain text once
    for the whole run and parses the first JSON object out of the text;
  * retries: 429, 5xx, 408/409, timeouts and connection errors back off exponentially with full jitter, never
    shorter than the server's Retry-After; other 4xx are the caller's error (no retry);
  * a semaphore bounds the requests in flight to `concurrency` (backoff sleeps hold no slot);
  * `max_requests` caps the HTTP requests sent (retries included): past it, `BudgetExhausted`.
The openai client's own retries are off (max_retries=0) so that every request is counted and bounded here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import random
import re
import time

import openai

from qzhou_jax.cli_errors import UsageError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}


class BudgetExhausted(Exception):
    """--max-requests reached: no further request is sent."""


class RequestFailed(Exception):
    """A request that cannot succeed by retrying (a 4xx other than 408/409/429, or retries exhausted)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class AuthError(UsageError):
    """401/403: every further request would fail too; the run stops (exit status 2: check the key / URL)."""


@dataclasses.dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass
class ClientStats:
    requests: int = 0          # HTTP requests sent
    retried: int = 0           # of which retries after 429 / 5xx / timeout / connection error
    by_status: dict = dataclasses.field(default_factory=dict)  # retried failures by cause
    max_in_flight: int = 0


def retry_after_seconds(headers) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); also `retry-after-ms` (OpenAI)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def backoff_seconds(retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Full jitter on base * 2^retry (capped), never below the server's Retry-After."""
    delay = rng.uniform(0.0, min(cap, base * (2 ** retry)))
    return max(delay, retry_after or 0.0)


def parse_json_object(text: str) -> dict:
    """The first JSON object in `text` (bare, fenced in ``` or after prose). ValueError if there is none."""
    if text is None:
        raise ValueError("empty response")
    text = text.strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the response")


def _mentions_response_format(err: openai.APIStatusError) -> bool:
    return bool(re.search(r"response_format|json_schema|structured|guided", str(err.message or ""), re.I))


class ChatClient:
    def __init__(self, *, base_url: str, api_key: str, model: str, concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 10, max_requests: int | None = None, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0, temperature: float = 0.8, max_tokens: int | None = None,
                 structured: bool = True, seed: int = 0):
        if concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, got {concurrency}")
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.concurrency, self.max_retries, self.max_requests = concurrency, max_retries, max_requests
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.structured = structured  # False after the server rejected json_schema once
        self.stats = ClientStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self._auth_error: AuthError | None = None
        self._halted: BaseException | None = None  # halt(): the run stopped; nothing more is sent
        self._rng = random.Random(seed)  # jitter only; never affects what is asked or accepted

    async def close(self) -> None:
        await self._client.close()

    def halt(self, error: BaseException) -> None:
        """No request is sent after this (those waiting for a slot raise `error`); those in flight finish."""
        self._halted = error

    def request_body(self, messages: list[dict], schema_name: str, response_format: dict, seed: int) -> dict:
        body = dict(model=self.model, messages=messages, temperature=self.temperature, seed=seed)
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        if self.structured:
            body["response_format"] = response_format
        return body

    async def _send(self, body: dict):
        async with self._slots:
            if self._auth_error is not None:  # every further request would be refused too
                raise self._auth_error
            if self._halted is not None:
                raise self._halted
            if self.max_requests is not None and self.stats.requests >= self.max_requests:
                raise BudgetExhausted(f"--max-requests {self.max_requests} reached")
            self.stats.requests += 1
            self._in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                return await self._client.chat.completions.create(**body)
            finally:
                self._in_flight -= 1

    async def complete(self, messages: list[dict], response_format: dict, seed: int) -> Completion:
        """One completion, retried through transient failures. Raises BudgetExhausted, RequestFailed, AuthError."""
        retry = 0
        while True:
            body = self.request_body(messages, response_format["json_schema"]["name"], response_format, seed)
            retry_after, cause = None, None
            try:
                response = await self._send(body)
            except openai.APITimeoutError:
                cause = "timeout"
            except openai.APIConnectionError:
                cause = "connection"
            except openai.APIStatusError as err:
                status = err.status_code
                if status in (401, 403):
                    self._auth_error = AuthError(f"HTTP {status} from the server: check the API key variable and "
                                                 f"base URL ({err.message})")
                    raise self._auth_error from None
                if status in (400, 422) and "response_format" in body and (
                        _mentions_response_format(err) or status == 400):
                    if self.structured:
                        log.warning("server rejected response_format json_schema (HTTP %d: %s); "
                                    "falling back to JSON parsed from text", status, str(err.message)[:200])
                    self.structured = False
                    continue  # not a retry of a transient failure: the same item, asked differently
                if status in RETRYABLE_STATUS or status >= 500:
                    cause, retry_after = f"http_{status}", retry_after_seconds(err.response.headers)
                else:
                    raise RequestFailed(f"http_{status}", f"HTTP {status}: {str(err.message)[:300]}") from None
            else:
                choice = response.choices[0] if response.choices else None
                text = choice.message.content if choice is not None and choice.message is not None else None
                usage = response.usage
                return Completion(text or "", getattr(usage, "prompt_tokens", 0) or 0,
                                  getattr(usage, "completion_tokens", 0) or 0)
            self.stats.by_status[cause] = self.stats.by_status.get(cause, 0) + 1
            if retry >= self.max_retries:
                raise RequestFailed(cause, f"{cause}: still failing after {retry} retries")
            delay = backoff_seconds(retry, self.backoff_base, self.backoff_cap, retry_after, self._rng)
            retry += 1
            self.stats.retried += 1
            log.debug("%s; retry %d in %.2fs", cause, retry, delay)
            await asyncio.sleep(delay)
