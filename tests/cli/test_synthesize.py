"""The CLI: SIGKILL mid-run and rerun (nothing finished asked again, output equal to an uninterrupted run), the API
key absent from every file and from stdout/stderr; merge and decontaminate subcommands."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qzhou_jax.cli import synthesize
from qzhou_jax.synthesis import decontam
from qzhou_jax.synthesis.cache import request_key
from qzhou_jax.synthesis.fake_server import ScriptedServer
from qzhou_jax.synthesis.run import SynthesisConfig, run
from tests.cli_run import run_main

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-cli-SECRET-abcdef987654"


def _input(path, n):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(words[(i + k) % len(words)] for k in range(8)) + f" item{i}"
            p = " ".join(words[(i * 3 + k) % len(words)] for k in range(18)) + f" passage{i}"
            f.write(json.dumps({"query": q, "pos": [p], "neg": []}) + "\n")


def _cli(tmp_path, server, out):
    return [sys.executable, "-m", "qzhou_jax.synthesize", "paraphrase", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(out), "--n", "2", "--base-url", server.base_url, "--model", "fake-model",
            "--concurrency", "4", "--decontaminate-tasks", "none", "--progress-every", "0.5"]


def _env():
    env = dict(os.environ, OPENAI_API_KEY=SECRET, PYTHONPATH=str(ROOT))
    env.pop("OPENAI_BASE_URL", None)
    return env


def _journal_keys(path):
    keys = set()
    for line in Path(path).read_bytes().split(b"\n"):
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError):
            pass  # torn last line
    return keys


def test_sigkill_then_rerun_completes_without_paying_twice(tmp_path):
    _input(tmp_path / "in.jsonl", 48)
    with ScriptedServer(latency=0.05) as server:
        reference = run(SynthesisConfig(generator="paraphrase", input=str(tmp_path / "in.jsonl"),
                                        output=str(tmp_path / "ref.jsonl"), n=2, model="fake-model",
                                        base_url=server.base_url, concurrency=4, progress_every=60),
                        decontam.Decontaminator())
        assert reference["complete"]
        out = tmp_path / "run" / "out.jsonl"
        journal = Path(f"{out}.journal.jsonl")
        proc = subprocess.Popen(_cli(tmp_path, server, out), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=tmp_path)
        deadline = time.time() + 120
        while time.time() < deadline and (not journal.exists() or journal.read_bytes().count(b"\n") < 12):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        stdout1, stderr1 = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        finished = _journal_keys(journal)
        assert 12 <= len(finished) < reference["requests"], "the kill came too late to test anything"
        assert not out.exists()
        seen = len(server.requests)
        proc = subprocess.run(_cli(tmp_path, server, out), env=_env(), capture_output=True, cwd=tmp_path,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        rerun_keys = [request_key(body, "paraphrase") for body in server.requests[seen:]]
    assert not finished & set(rerun_keys), "a finished request was sent again"
    assert server.max_in_flight <= 4
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    summary = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert summary["complete"] and summary["cached_responses"] >= len(finished)
    assert "items 48/48" in proc.stderr.decode()  # the progress line
    for blob in (stdout1, stderr1, proc.stdout, proc.stderr):
        assert SECRET.encode() not in blob
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) == 3 and not any(SECRET.encode() in p.read_bytes() for p in files)


def test_merge_and_decontaminate_subcommands(tmp_path, capsys):
    _input(tmp_path / "in.jsonl", 6)
    with ScriptedServer() as server:
        args = ["--input", str(tmp_path / "in.jsonl"), "--n", "1", "--base-url", server.base_url, "--model", "m",
                "--decontaminate-tasks", "none", "--progress-every", "60"]
        whole = synthesize.main(["hard_negatives", *args, "--output", str(tmp_path / "whole.jsonl")])
        for i in range(2):
            synthesize.main(["hard_negatives", *args, "--output", str(tmp_path / f"s{i}.jsonl"), "--shard", f"{i}/2"])
    merged = synthesize.main(["merge", "--output", str(tmp_path / "m.jsonl"), str(tmp_path / "s1.jsonl"),
                              str(tmp_path / "s0.jsonl")])
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert merged["rows_written"] == whole["rows_written"] == 6 and merged["complete"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows_written"] == 6
    first = json.loads((tmp_path / "in.jsonl").read_text().splitlines()[0])["query"]
    (tmp_path / "eval.txt").write_text(first + "\n")
    out = synthesize.main(["decontaminate", "--input", str(tmp_path / "m.jsonl"), "--output",
                           str(tmp_path / "clean.jsonl"), "--decontaminate-tasks", "none",
                           "--decontaminate-file", str(tmp_path / "eval.txt")])
    assert out["rows"] == 6 and out["kept"] == 5 and out["decontaminated"] == {"exact": 1}


def test_auth_error_stops_the_run_with_a_clear_exit(tmp_path):
    from qzhou_jax.synthesis.fake_server import Reply

    _input(tmp_path / "in.jsonl", 3)
    with ScriptedServer(lambda req, i: Reply(status=401, error="invalid api key")) as server:
        with pytest.raises(SystemExit) as exit_info:
            synthesize.main(["augment", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                             "--n", "1", "--base-url", server.base_url, "--model", "m", "--concurrency", "1",
                             "--decontaminate-tasks", "none"])
    assert exit_info.value.code == 2 and len(server.requests) == 1
    assert json.loads((tmp_path / "o.jsonl.summary.json").read_text())["stopped"].startswith("AuthError")


def _synthesize(tmp_path, server, capsys, *extra, generator="paraphrase", n=2):
    """synthesize.main as a user runs it: (exit status, stdout, stderr)."""
    argv = [generator, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--n", str(n),
            "--base-url", server.base_url, "--model", "m", "--decontaminate-tasks", "none", "--progress-every", "60",
            "--backoff-base", "0.01", *extra]
    return run_main(synthesize.main, argv, capsys)


def test_a_wave_of_unusable_answers_stops_the_run_and_exits_1(tmp_path, capsys):
    from qzhou_jax.synthesis.fake_server import Reply

    _input(tmp_path / "in.jsonl", 30)  # 30 rows x 20 attempts: 600 requests if nothing stopped it
    with ScriptedServer(lambda req, i: Reply(content="Sorry, I cannot help with that.")) as server:
        status, out, err = _synthesize(tmp_path, server, capsys, "--concurrency", "2")
    summary = json.loads((tmp_path / "o.jsonl.summary.json").read_text())
    assert status == 1 and len(server.requests) <= 8 + 2  # one wave (max(--concurrency, 8)) and those in flight
    assert "error: stopped after 8 unusable answers in a row (malformed_json 8)" in err
    assert "0 rows written" in err and "summary in" in err and "Traceback" not in err
    assert not summary["complete"] and summary["stopped"].startswith("UnusableAnswers")
    assert summary["unusable_answers"] >= 8 and summary["rows_written"] == 0
    # A rerun replays the paid answers without counting them again: it asks one more wave, then stops the same way.
    with ScriptedServer(lambda req, i: Reply(content="still no JSON")) as server:
        status, _, err = _synthesize(tmp_path, server, capsys, "--concurrency", "2")
    assert status == 1 and 8 <= len(server.requests) <= 10 and "unusable answers in a row" in err


def test_a_hanging_server_fails_items_and_exits_1_with_the_counts(tmp_path, capsys):
    from qzhou_jax.synthesis.fake_server import Reply

    _input(tmp_path / "in.jsonl", 3)
    with ScriptedServer(lambda req, i: Reply(delay=3.0)) as server:
        status, out, err = _synthesize(tmp_path, server, capsys, "--concurrency", "3", "--timeout", "0.3",
                                       "--max-retries", "1")
    summary = json.loads(out.strip().splitlines()[-1])  # the summary line is still printed
    assert status == 1 and summary["items_failed"] == {"timeout": 3} and not summary["complete"]
    assert "o.jsonl is partial: 0 of 3 items done; 3 failed (timeout 3); 0 rows written" in err
    assert len(server.requests) == 6  # each item: its request and one retry

    # Many items: a wave of failed requests stops the run instead of waiting out every item's timeouts.
    _input(tmp_path / "in.jsonl", 12)
    with ScriptedServer(lambda req, i: Reply(delay=3.0)) as server:
        status, out, err = _synthesize(tmp_path, server, capsys, "--concurrency", "1", "--timeout", "0.3",
                                       "--max-retries", "1", "--max-unusable", "3")
    assert status == 1 and "stopped after 3 unusable answers in a row (request_timeout 3)" in err
    assert len(server.requests) <= (3 + 1) * 2


def test_items_short_of_n_exit_1_and_a_complete_run_exits_0(tmp_path, capsys):
    from qzhou_jax.synthesis.fake_server import Reply, original_texts

    _input(tmp_path / "in.jsonl", 2)
    same = lambda req, i: Reply(payload={"rewrites": [dict(zip(("query", "positive"), original_texts(req)))]})
    with ScriptedServer(same) as server:  # well-formed answers the checks reject: usable, but never accepted
        status, out, err = _synthesize(tmp_path, server, capsys, "--max-attempts", "3")
    summary = json.loads(out.strip().splitlines()[-1])
    assert status == 1 and summary["items_short"] == 2 and not summary["complete"] and summary["requests"] == 6
    assert "0 of 2 items done; 2 short of --n 2 after --max-attempts (raise it to ask further)" in err
    with ScriptedServer() as server:  # as the hint says: the journaled answers replay, attempts 4.. are asked
        status, out, err = _synthesize(tmp_path, server, capsys, "--max-attempts", "6")
    summary = json.loads(out.strip().splitlines()[-1])
    assert status == 0 and summary["complete"] and summary["cached_responses"] == 6 and "error" not in err


def test_merging_a_partial_shard_exits_1(tmp_path, capsys):
    from qzhou_jax.synthesis.fake_server import Reply

    _input(tmp_path / "in.jsonl", 4)
    too_long = lambda req, i: Reply(status=400, error="prompt too long") if re.search(
        r"\bitem1\b", req["messages"][-1]["content"]) else None  # row 1 fails; the others are answered
    with ScriptedServer(too_long) as server:
        args = ["hard_negatives", "--input", str(tmp_path / "in.jsonl"), "--n", "1", "--base-url", server.base_url,
                "--model", "m", "--decontaminate-tasks", "none", "--progress-every", "60", "--no-structured-output"]
        synthesize.main([*args, "--output", str(tmp_path / "s0.jsonl"), "--shard", "0/2"])
        with pytest.raises(SystemExit) as stop:
            synthesize.main([*args, "--output", str(tmp_path / "s1.jsonl"), "--shard", "1/2"])
    assert stop.value.code == 1 and "1 failed (http_400 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        synthesize.main(["merge", "--output", str(tmp_path / "m.jsonl"), str(tmp_path / "s0.jsonl"),
                         str(tmp_path / "s1.jsonl")])
    assert stop.value.code == 1 and "m.jsonl is partial: 3 of 4 items done; 1 failed" in capsys.readouterr().err
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3  # what there is, is written
