"""Keeps benchmarks/finetuning.py from rotting: toy-size runs of its three phases on a tiny random base (figures
printed; the checks are the ones the measurements rest on: LoRA and top-N keep less optimizer state, every variant
trains the stage it is given, a refresh variant refreshes)."""
import argparse
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
                          "--tasks", "STSBenchmark", "--max-examples", "20"])
    assert [r["variant"] for r in quality["rows"]] == ["base (untrained)", "full", "lora:2+refresh:2"]
    assert len(quality["rows"][2]["refresh_s"]) == 1  # refreshed at step 2 of 3
    # a second run with one more variant trains only that one: the others are read back from OUT/quality.json
    again = bench.main(["quality", *common, "--variants", "full,top:1+lr:1e-3", "--steps", "3",
                        "--tasks", "STSBenchmark", "--max-examples", "20"])
    rows = {r["variant"]: r for r in again["rows"]}
    assert rows["full"]["train_s"] == quality["rows"][1]["train_s"]
    assert set(rows) == {"base (untrained)", "full", "top:1+lr:1e-3", "lora:2+refresh:2"}
    merged = bench.main(["merge", *common, "--parents", "full,lora:2+refresh:2", "--tasks", "STSBenchmark",
                         "--max-examples", "20"])
    assert [r["variant"] for r in merged["rows"]][2:] == [f"{m}(full+lora:2+refresh:2)"
                                                          for m in ("linear", "slerp", "ties")]
    out = capsys.readouterr().out
    assert "| variant | trainable params" in out and "| after 3 steps |" in out
    json.loads(out.strip().splitlines()[-1])


def test_variants_parse_and_change_only_what_they_name():
    assert bench.parse_variant("lora:8+refresh:10+lr:1e-3") == {"kind": "lora", "arg": 8, "refresh": 10, "lr": 1e-3}
    assert bench.parse_variant("full") == {"kind": "full", "arg": None, "refresh": 0, "lr": 0.0}
    for bad in ("lora", "full:2", "top:x", "lora:8+every:3", "half"):
        with pytest.raises(ValueError, match="expected full, lora:R or top:N"):
            bench.parse_variant(bad)


def test_a_variant_changes_only_what_it_names(tmp_path):
    from qzhou_jax.train.config_check import flatten

    args = argparse.Namespace(config="configs/smollm2.py:ablation:stage2-alone", base=str(tmp_path), out=str(tmp_path),
                              steps=0, max_train_examples=0, lr=0.0, lora_lr=5e-4, lora_alpha=0.0, lora_dropout=0.1)
    full = flatten(bench.stage_config(args, "full").to_dict())
    for variant, expected in [("lora:4", {"model.lora.rank": 4, "model.lora.alpha": 8.0, "optim.lr": 5e-4}),
                              ("top:15+lr:3e-4", {"model.trainable": "top:15", "optim.lr": 3e-4}),
                              ("full+refresh:10", {"mine.every": 10})]:
        other = flatten(bench.stage_config(args, variant).to_dict())
        assert {k: v for k, v in other.items() if full[k] != v} == expected, variant


def test_a_bad_variant_is_one_usage_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["cost", "--base", "unused", "--variants", "full,lora"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--variants: variant 'lora': expected full, lora:R or top:N" in err and "Traceback" not in err
