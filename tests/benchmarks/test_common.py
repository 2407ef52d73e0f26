"""benchmarks/common.py: the side-by-side table and the shared command-line flags."""
import argparse
import os

import pytest

from benchmarks import common


def test_side_by_side_table_shows_values_scaled_and_ratio_unscaled():
    rows = [("speed", "speed", "{:.1f}"), ("flops (G)", "flops", "{:.2f}")]
    jax_row, torch_row = {"speed": 30.0, "flops": 4.5e9, "unused": 1}, {"speed": 12.0, "flops": 1.5e9}
    lines = common.side_by_side_table(rows, jax_row, torch_row, scale={"flops": 1e-9}).splitlines()
    assert lines[0].split() == ["JAX", "PyTorch", "JAX/PyTorch"]
    assert lines[1].split() == ["speed", "30.0", "12.0", "2.50"]
    assert lines[2].split() == ["flops", "(G)", "4.50", "1.50", "3.00"]
    assert len({len(line) for line in lines}) == 1  # fixed-width columns
    with pytest.raises(KeyError):
        common.side_by_side_table([("x", "missing", "{}")], jax_row, torch_row)


def test_shared_flags_parse_with_their_defaults():
    parser = argparse.ArgumentParser()
    common.add_model_args(parser)
    common.add_runtime_args(parser, dtype_help="compute dtype")
    args = parser.parse_args([])
    assert (args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate) == (768, 12, 12, 4, 2048)
    assert args.dtype == "float32" and args.threads == len(os.sched_getaffinity(0))
    args = parser.parse_args(["--hidden", "32", "--kv-heads", "1", "--dtype", "bfloat16", "--threads", "3"])
    assert (args.hidden, args.kv_heads, args.dtype, args.threads) == (32, 1, "bfloat16", 3)
    assert common.model_summary(args, 7) == {"params": 7, "hidden": 32, "layers": 12, "heads": 12, "kv_heads": 1,
                                             "intermediate": 2048, "vocab": 151665, "dtype": "bfloat16"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float16"])


def test_ratios_are_withheld_when_the_cores_are_oversubscribed():
    rows = [("speed", "speed", "{:.1f}")]
    jax_row, torch_row = {"speed": 30.0}, {"speed": 12.0}
    quiet, loaded = common.machine_load(0.3, 2.1, cores=2), common.machine_load(0.3, 7.5, cores=2)
    assert not quiet["oversubscribed"] and loaded["oversubscribed"]
    assert common.ratios(jax_row, torch_row, ["speed"], quiet) == {"speed": 2.5}
    assert common.ratios(jax_row, torch_row, ["speed"], loaded) is None
    line = common.side_by_side_table(rows, jax_row, torch_row, oversubscribed=True).splitlines()[1]
    assert line.split() == ["speed", "30.0", "12.0", "loaded"]
    assert "OVERSUBSCRIBED" in common.load_note(loaded) and "OVERSUBSCRIBED" not in common.load_note(quiet)
