"""The chat client against a real local HTTP server: retries, Retry-After, timeouts, json_schema fallback,
concurrency bound, request budget."""
import asyncio
import email.utils
import json
import random
import time

import pytest

from qzhou_jax.synthesis import prompts
from qzhou_jax.synthesis.client import (
    AuthError,
    BudgetExhausted,
    ChatClient,
    RequestFailed,
    backoff_seconds,
    parse_json_object,
    retry_after_seconds,
)
from qzhou_jax.synthesis.fake_server import Reply, ScriptedServer

MESSAGES = [{"role": "user", "content": "Query: a b c\n\nPositive passage: d e f"}]
RF = prompts.response_format("paraphrase")


def _complete(server, n=1, **kwargs):
    async def main():
        client = ChatClient(base_url=server.base_url, api_key="k", model="m", **kwargs)
        try:
            results = await asyncio.gather(*(client.complete(MESSAGES, RF, seed=i) for i in range(n)),
                                           return_exceptions=True)
            return results, client
        finally:
            await client.close()

    return asyncio.run(main())


def test_parse_json_object_from_text():
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('Sure! Here it is:\n```json\n{"a": [1, {"b": 2}]}\n```') == {"a": [1, {"b": 2}]}
    assert parse_json_object('[1, 2] then {"x": "}"}') == {"x": "}"}
    for bad in ("", "no json here", '{"a": 1', "[1, 2]"):
        with pytest.raises(ValueError):
            parse_json_object(bad)


def test_retry_after_parsing_and_backoff():
    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after-ms": "300"}) == pytest.approx(0.3)
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds({"retry-after": date}) <= 30
    assert retry_after_seconds({}) is None
    rng = random.Random(0)
    delays = [backoff_seconds(3, 1.0, 60.0, None, rng) for _ in range(2000)]
    assert 0 <= min(delays) and max(delays) <= 8.0 and 3.0 < sum(delays) / len(delays) < 5.0  # full jitter on 8
    assert all(backoff_seconds(0, 1.0, 60.0, 5.0, rng) >= 5.0 for _ in range(100))
    assert max(backoff_seconds(20, 1.0, 60.0, None, rng) for _ in range(100)) <= 60.0


def test_429_honours_retry_after_then_succeeds():
    script = lambda req, i: Reply(status=429, headers={"Retry-After": "0.5"}) if i < 2 else None
    with ScriptedServer(script) as server:
        start = time.time()
        (result,), client = _complete(server, backoff_base=0.01)
        elapsed = time.time() - start
    assert "rewrites" in parse_json_object(result.text)
    assert len(server.requests) == 3 and client.stats.retried == 2
    assert client.stats.by_status == {"http_429": 2}
    assert elapsed >= 1.0  # two waits of at least Retry-After, though the exponential part is ~0.01 s


def test_500_retried_and_400_not():
    with ScriptedServer(lambda req, i: Reply(status=500) if i < 3 else None) as server:
        (result,), client = _complete(server, backoff_base=0.01)
    assert result.text and len(server.requests) == 4 and client.stats.by_status == {"http_500": 3}
    with ScriptedServer(lambda req, i: Reply(status=500)) as server:
        (result,), client = _complete(server, backoff_base=0.001, max_retries=2)
    assert isinstance(result, RequestFailed) and result.reason == "http_500" and len(server.requests) == 3
    with ScriptedServer(lambda req, i: Reply(status=404)) as server:
        (result,), client = _complete(server, structured=False)
    assert isinstance(result, RequestFailed) and len(server.requests) == 1
    with ScriptedServer(lambda req, i: Reply(status=401)) as server:
        (result,), client = _complete(server)
    assert isinstance(result, AuthError) and len(server.requests) == 1


def test_slow_answer_past_timeout_is_retried():
    with ScriptedServer(lambda req, i: Reply(delay=2.0) if i == 0 else None) as server:
        (result,), client = _complete(server, timeout=0.5, backoff_base=0.01)
    assert result.text and client.stats.by_status == {"timeout": 1} and len(server.requests) == 2


def test_json_schema_rejected_falls_back_to_text():
    def script(req, i):
        if "response_format" in req:
            return Reply(status=400, error="response_format json_schema is not supported by this server")
        return Reply(content='Here you go: {"rewrites": [{"query": "x", "positive": "y"}]} hope it helps')

    with ScriptedServer(script) as server:
        results, client = _complete(server, n=3)
    assert all(parse_json_object(r.text) == {"rewrites": [{"query": "x", "positive": "y"}]} for r in results)
    assert not client.structured
    rejected = [r for r in server.requests if "response_format" in r]
    assert 1 <= len(rejected) <= 3 and len(server.requests) == len(rejected) + 3
    assert rejected[0]["response_format"]["json_schema"]["schema"] == prompts.SCHEMAS["paraphrase"]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounded(concurrency):
    with ScriptedServer(latency=0.1) as server:
        results, client = _complete(server, n=12, concurrency=concurrency)
    assert all(r.text for r in results)
    assert server.max_in_flight == concurrency == client.stats.max_in_flight


def test_max_requests_budget():
    with ScriptedServer() as server:
        results, client = _complete(server, n=5, max_requests=3)
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 2 and len(server.requests) == 3
    assert json.loads(results[0].text)
