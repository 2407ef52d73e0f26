"""benchmarks/common.py: the side-by-side table and the shared command-line flags."""
import argparse
import json
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
    assert not hasattr(args, "model_dir")  # only benchmarks that can load a real directory offer --model-dir
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float16"])
    common.add_model_args(parser := argparse.ArgumentParser(), model_dir=True)
    assert parser.parse_args([]).model_dir is None and parser.parse_args(["--model-dir", "d"]).model_dir == "d"


def test_model_info_reads_the_directorys_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
         "tie_word_embeddings": True}))
    info = common.model_info(str(tmp_path), str(tmp_path))
    # SmolLM2-135M's shape: 134,543,808 encoder params (what transformers' Qwen2Model holds for it).
    assert info == {"source": str(tmp_path), "params": 134543808, "hidden": 576, "layers": 30, "heads": 9,
                    "kv_heads": 3, "head_dim": 64, "intermediate": 1536, "vocab": 49152, "tied": True}
    assert common.model_summary(info, "bfloat16") == {**info, "dtype": "bfloat16"}
    assert common.describe_model(info) == (f"{tmp_path.name}: 134.5M params (hidden 576, 30 layers, 9/3 heads of "
                                           "64, ffn 1536, vocab 49152 tied)")
    assert common.describe_model({**info, "source": "random", "tied": False}).startswith("random Qwen2: ")


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
