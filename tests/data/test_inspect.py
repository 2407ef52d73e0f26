import textwrap

import numpy as np
import pytest

from qzhou_jax.config import load_config
from qzhou_jax.data import inspect as data_inspect
from qzhou_jax.cli import inspect as inspect_cli


def test_cli_prints_mixture_batches_histograms_and_skips(tmp_path, write_jsonl, tokenizer, capsys):
    rng = np.random.default_rng(0)
    words = "cat dog bird fish red blue one two three".split()
    write_jsonl(tmp_path / "ret.jsonl", [{"query": " ".join(rng.choice(words, 3)), "pos": [" ".join(rng.choice(words, 5))]}
                                         for _ in range(20)] + ["{broken"])
    write_jsonl(tmp_path / "cls.jsonl", [{"text": " ".join(rng.choice(words, 4)), "label": "ab"[i % 2]}
                                         for i in range(20)])
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "cfg.py").write_text(textwrap.dedent(f"""
        import ml_collections

        def get_config(arg="0.5"):
            config = ml_collections.ConfigDict()
            config.data = dict(
                datasets=[dict(name="ret", source="jsonl:{tmp_path}/ret.jsonl", task="retrieval", num_negatives=1,
                               instruction="find", max_len_query=8, max_len_passage=8),
                          dict(name="cls", source="jsonl:{tmp_path}/cls.jsonl", task="classification",
                               num_negatives=2, instruction="classify", max_len_query=8, max_len_passage=8)],
                alpha=float(arg), batch_size=dict(retrieval=4, classification=4), buckets=(4, 8),
                skip_invalid=True, max_skipped_fraction=0.1)  # 1 bad row of 21
            return config
        """))
    assert load_config(f"{tmp_path}/cfg.py:1.0").data.alpha == 1.0
    rc = inspect_cli.main(["--config", f"{tmp_path}/cfg.py", "--batches", "2", "--hist-batches", "6",
                            "--tokenizer", str(tmp_path / "tok")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "== mixture (alpha=0.5, eta=None)" in out and " ret " in out and " cls " in out
    assert "ret: 1 rows skipped" in out and "malformed JSON" in out
    assert "step 0: dataset" in out and "step 1: dataset" in out and "anchor: 'Instruct: " in out
    assert "== token lengths over 6 batches" in out and "anchor: n=" in out
    assert "== dataset share" in out

    # --config.* overrides work as in training (the one loader); anything else is refused.
    rc = inspect_cli.main(["--config", f"{tmp_path}/cfg.py", "--config.data.alpha=1.0", "--batches", "1",
                            "--hist-batches", "1", "--tokenizer", str(tmp_path / "tok")])
    assert rc == 0 and "== mixture (alpha=1.0, eta=None)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        inspect_cli.main(["--config", f"{tmp_path}/cfg.py", "--bogus=1"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # a bad override: usage and the key, exit 2 (qzhou_jax/config/loader.py)
        inspect_cli.main(["--config", f"{tmp_path}/cfg.py", "--config.data.no_such_key=1"])
    assert stop.value.code == 2 and "no_such_key" in capsys.readouterr().err


def test_example_config_parses():
    from pathlib import Path

    from qzhou_jax.data.spec import DataConfig

    path = Path(data_inspect.__file__).resolve().parents[2] / "configs" / "data_example.py"
    data = DataConfig.from_config(load_config(str(path)).data)
    assert data.eta == 0.72 and len(data.datasets) >= 6
    assert {s.task for s in data.datasets} == {"retrieval", "pair_score", "classification"}
