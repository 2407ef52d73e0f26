"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks (no network, no LLM).

    with ScriptedServer(script) as server:       # script(request: dict, number: int) -> Reply | None
        ... base_url = server.base_url ...        # None -> the default "model" (`fake_answer`)
    server.requests, server.max_in_flight, server.headers

`fake_answer` is a deterministic stand-in for an LLM: it reads the original query/positive from the prompt and
returns outputs that pass the paper's checks (about 40-50% of the tokens replaced, same length and language), varied
by the request's seed. Tests break them on purpose through the script.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qzhou_jax.synthesis import checks


@dataclasses.dataclass
class Reply:
    content: str | None = None         # assistant message text (None: the default model's answer)
    status: int = 200
    headers: dict = dataclasses.field(default_factory=dict)
    delay: float = 0.0                 # seconds before answering
    error: str = ""                    # error message for status >= 400
    payload: dict | None = None        # JSON answer object (serialised as content)


def original_texts(request: dict) -> tuple[str, str]:
    """(query, positive) as the prompt states them (prompts.py's "Query:" / "Positive passage:" lines)."""
    user = request["messages"][-1]["content"]
    q = re.search(r"^(?:Query|查询): (.*)$", user, re.M)
    p = re.search(r"^(?:Positive passage|正例段落): (.*)$", user, re.M)
    return (q.group(1) if q else ""), (p.group(1) if p else "")


def requested_n(request: dict) -> int:
    m = re.search(r"(\d+) (?:times|new samples|hard negative)|改写 (\d+) 次|写 (\d+) (?:条|个)",
                  request["messages"][-1]["content"])
    return int(next(g for g in m.groups() if g)) if m else 1


def mutate(text: str, rng: random.Random, share: float = 0.45) -> str:
    """Replaces `share` of the tokens by new ones of the same script; keeps the token count."""
    toks = checks.tokens(text)
    zh = checks.language(text) == "zh"
    replaced = set(rng.sample(range(len(toks)), math.ceil(share * len(toks))))  # exactly: checks pass surely
    out = [(chr(0x4E00 + rng.randrange(0x5000)) if zh else f"w{rng.randrange(10**6)}") if i in replaced else t
           for i, t in enumerate(toks)]
    return ("" if zh else " ").join(out)


def fake_answer(request: dict) -> dict:
    """A valid JSON answer for any of the three generators, deterministic in the request's seed."""
    query, positive = original_texts(request)
    rng = random.Random(request.get("seed", 0))
    n = requested_n(request)
    schema = request.get("response_format", {}).get("json_schema", {}).get("name") or _schema_from_prompt(request)
    if schema == "paraphrase":
        return {"rewrites": [{"query": mutate(query, rng), "positive": mutate(positive, rng)} for _ in range(n)]}
    if schema == "augment":
        return {"samples": [{"query": mutate(query, rng, 0.6), "positive": mutate(positive, rng, 0.6),
                             "negative": mutate(positive, rng, 0.6)} for _ in range(n)]}
    kinds = ("inadequate", "irrelevant_information", "another_aspect")
    return {"negatives": [{"text": mutate(positive, rng, 0.5), "kind": kinds[i % 3]} for i in range(n)]}


def _schema_from_prompt(request: dict) -> str:
    user = request["messages"][-1]["content"]
    for name, key in (("paraphrase", '"rewrites"'), ("augment", '"samples"'), ("hard_negatives", '"negatives"')):
        if key in user:
            return name
    return "paraphrase"


class ScriptedServer:
    def __init__(self, script: Callable[[dict, int], Reply | None] | None = None, latency: float = 0.0):
        self.script, self.latency = script or (lambda request, number: None), latency
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    number = len(server.requests)
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.script(body, number) or Reply()
                    time.sleep(server.latency + reply.delay)
                    self._answer(body, reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body, reply: Reply):
                if reply.status >= 400:
                    data = {"error": {"message": reply.error or f"scripted {reply.status}", "type": "scripted",
                                      "code": reply.status}}
                else:
                    content = reply.content
                    if content is None:
                        content = json.dumps(reply.payload if reply.payload is not None else fake_answer(body),
                                             ensure_ascii=False)
                    data = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                            "model": body.get("model", ""),
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": content}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}
                raw = json.dumps(data, ensure_ascii=False).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default listen backlog (5) refuses connections at high concurrency
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def main(argv=None) -> None:
    """Serves the default fake model until killed: python -m qzhou_jax.synthesis.fake_server --latency 0.2."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qzhou_jax.synthesis.fake_server", description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    args = parser.parse_args(argv)
    with ScriptedServer(latency=args.latency) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
