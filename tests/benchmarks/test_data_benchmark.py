"""Keeps benchmarks/data.py from rotting: a toy-size run end to end (figures printed, no timing assertions)."""
import json

import pytest

from benchmarks import data as bench


@pytest.mark.slow  # five fresh interpreters and the Qwen2.5 tokenizer: about a minute on 2 cores
def test_toy_run_prints_every_figure(tmp_path, capsys):
    bench.main(["--sizes", "600,1200", "--throughput-samples", "300", "--batches", "1", "--threads", "1",
                "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert [r["n"] for r in result["scale"]] == [600, 1200]
    for r in result["scale"]:
        assert r["prepared"]["n"] == r["in_memory"]["n"] == r["n"]
    assert result["throughput"]["batches_per_s"] > 0 and result["v5p_128_need"]["per_host_tokens_per_s"] > 0
    assert "measured host rate / per-host need" in out
