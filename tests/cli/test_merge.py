"""`python -m qzhou_jax.merge` over HF directories: the output export holds, tensor by tensor (HF tensors: one
layer at a time), the method's formula of the inputs; usage errors are one line naming the flag, exit 2."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from qzhou_jax import merging
from qzhou_jax.cli import merge
from qzhou_jax.hf.load import weight_files
from tests import oracle


def _tensors(directory):
    out = {}
    for file in sorted(set(weight_files(str(directory)).values())):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        oracle.make_hf_model(root / name, "gqa", seed=seed, vocab_size=151680)  # the built-in tokenizer fits
    return root


@pytest.mark.parametrize("method,extra,expected", [
    ("linear", ["--weights", "1", "3"], lambda t, a, b, base: (a + 3 * b) / 4),
    ("slerp", ["--weights", "0.7", "0.3"], lambda t, a, b, base: merging.slerp(0.3, a, b)),
    ("ties", ["--base", "BASE", "--density", "0.5"],
     lambda t, a, b, base: merging.ties(base, [a, b], [1, 1], 0.5)),
])
def test_cli_merges_hf_directories_tensor_by_tensor(models, tmp_path, method, extra, expected):
    extra = [str(models / "base") if x == "BASE" else x for x in extra]
    out = tmp_path / "merged"
    merge.main(["--method", method, "--models", str(models / "a"), str(models / "b"), "--out", str(out), *extra])
    got, a, b, base = (_tensors(d) for d in (out, models / "a", models / "b", models / "base"))
    assert set(got) == set(a)
    for name in a:  # every HF tensor is one tensor of the merge (a layer's q_proj, not the stacked leaf)
        np.testing.assert_allclose(got[name], expected(name, a[name], b[name], base[name]), rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    source = json.loads((out / "qzhou_export.json").read_text())
    assert source["merge"]["method"] == method


def test_cli_usage_errors(models, tmp_path, capsys):
    for argv, message in (
            (["--method", "ties", "--models", "A", "B"], "needs --base"),
            (["--method", "slerp", "--models", "A", "B", "C"], "exactly two"),
            (["--method", "linear", "--models", "A", "B", "--weights", "1"], "1 weights for 2 models")):
        with pytest.raises(SystemExit) as err:
            merge.main(argv + ["--out", str(tmp_path / "x")])
        assert err.value.code == 2 and message in capsys.readouterr().err
    oracle.make_hf_model(tmp_path / "odd", "odd", vocab_size=151680)
    with pytest.raises(SystemExit) as err:
        merge.main(["--method", "linear", "--models", str(models / "a"), str(tmp_path / "odd"), "--out",
                    str(tmp_path / "y")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err.value.code == 2 and len(errors) == 1 and "different architecture" in errors[0]  # no traceback
    with pytest.raises(SystemExit) as err:  # a path that is neither a workdir nor an HF directory
        merge.main(["--method", "linear", "--models", str(models / "a"), str(tmp_path / "missing"), "--out",
                    str(tmp_path / "z")])
    assert err.value.code == 2 and "error: --models" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_workdir_out_is_a_params_only_checkpoint_that_reads_like_a_run(models, tmp_path):
    from qzhou_jax.hf.load import load_params
    from qzhou_jax.model import ModelConfig
    from qzhou_jax.run import checkpoint

    merge.main(["--method", "linear", "--models", str(models / "a"), str(models / "b"), "--out", str(tmp_path / "hf"),
                "--workdir-out", str(tmp_path / "wd")])
    params, config, meta = checkpoint.restore_params(str(tmp_path / "wd"))
    assert meta["step"] == 0 and meta["merge"]["method"] == "linear" and config.lora_rank == 0
    a, b = (load_params(str(models / m), ModelConfig.from_hf(models / m)) for m in ("a", "b"))
    np.testing.assert_allclose(np.asarray(params["layers"]["mlp"]["up_proj"]["kernel"]),
                               (np.asarray(a["layers"]["mlp"]["up_proj"]["kernel"]) +
                                np.asarray(b["layers"]["mlp"]["up_proj"]["kernel"])) / 2, rtol=1e-6)
    # ... and merges again as an input (a workdir among the models).
    merge.main(["--method", "linear", "--models", str(tmp_path / "wd"), str(models / "a"), "--out",
                str(tmp_path / "again")])
    assert (tmp_path / "again" / "config.json").exists()
