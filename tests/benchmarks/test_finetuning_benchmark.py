"""Keeps benchmarks/finetuning.py from rotting: toy-size runs of its three phases on a tiny random base (figures
printed; the only checks are the ones the measurements rest on: LoRA and top-N keep less optimizer state)."""
import json

import pytest

from benchmarks import finetuning as bench
from tests import oracle


@pytest.mark.slow  # fresh interpreters, a few compiles and evaluations: minutes on 2 cores
def test_toy_runs_print_every_phase(tmp_path, capsys):
    base = tmp_path / "base"
    oracle.make_hf_model(base, "gqa", vocab_size=151680)
    common = ["--base", str(base), "--out", str(tmp_path / "runs"), "--batch", "8", "--query-len", "16",
              "--passage-len", "32", "--max-train-examples", "64"]
    cost = bench.main(["cost", *common, "--variants", "full,lora:2,top:1", "--repeats", "1"])
    rows = {r["variant"]: r for r in cost["rows"]}
    assert rows["lora:2"]["opt_state_mb"] < rows["top:1"]["opt_state_mb"] < rows["full"]["opt_state_mb"]
    assert rows["lora:2"]["trainable_params"] < rows["top:1"]["trainable_params"] < rows["full"]["params"]
    quality = bench.main(["quality", *common, "--variants", "full,lora:2+refresh:2", "--steps", "3",
                          "--tasks", "STSBenchmark", "--max-examples", "20", "--mine-start", "2"])
    assert [r["variant"] for r in quality["rows"]] == ["base (untrained)", "full", "lora:2+refresh:2"]
    assert len(quality["rows"][2]["refresh_s"]) == 1  # refreshed at step 2 of 3
    merged = bench.main(["merge", *common, "--parents", "full,lora:2+refresh:2", "--tasks", "STSBenchmark",
                         "--max-examples", "20"])
    assert [r["variant"] for r in merged["rows"]][2:] == [f"{m}(full+lora:2+refresh:2)"
                                                          for m in ("linear", "slerp", "ties")]
    out = capsys.readouterr().out
    assert "| variant | trainable params" in out and "| after 3 steps |" in out
    json.loads(out.strip().splitlines()[-1])
