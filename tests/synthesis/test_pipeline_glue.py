"""configs/synthetic_example.py end to end (seed -> paraphrase -> hard negatives -> training data) against the
scripted server, and the data config's `decontaminate` option."""
import importlib.util
import json
from pathlib import Path

from qzhou_jax.cli import synthesize
from qzhou_jax.data import shared_data
from qzhou_jax.data.errors import SkipCounter
from qzhou_jax.data.pipeline import load_datasets, load_samples, mixture_info
from qzhou_jax.data.spec import DatasetSpec
from qzhou_jax.eval.tasks import evaluation_texts
from qzhou_jax.synthesis.fake_server import ScriptedServer
from qzhou_jax.synthesis.seed import write_seed

ROOT = Path(__file__).resolve().parents[2]


def example_config(synth_dir):
    spec = importlib.util.spec_from_file_location("synthetic_example", ROOT / "configs" / "synthetic_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(str(synth_dir))


def test_seed_paraphrase_hard_negatives_train_data(tmp_path):
    config = example_config(tmp_path)
    config.data.datasets[0]["max_examples"] = 12
    config.data.datasets[0]["decontaminate"] = "TrecQAReranking"  # the whole index is slow to build in a test
    seed = write_seed(config, "trecqa", str(tmp_path / "seed.jsonl"))
    assert seed["rows"] == 12
    with ScriptedServer() as server:
        api = ["--base-url", server.base_url, "--model", "fake", "--decontaminate-tasks", "TrecQAReranking",
               "--progress-every", "60"]
        para = synthesize.main(["paraphrase", "--input", str(tmp_path / "seed.jsonl"), "--output",
                                str(tmp_path / "para.jsonl"), "--n", "2", *api])
        hn = synthesize.main(["hard_negatives", "--input", str(tmp_path / "para.jsonl"), "--output",
                              str(tmp_path / "para_hn.jsonl"), "--n", "3", *api])
    assert para["complete"] and hn["complete"] and hn["items"] == para["rows_written"]
    rows = [json.loads(line) for line in (tmp_path / "para_hn.jsonl").read_text().splitlines()]
    assert all(r["generator"] == "paraphrase+hard_negatives" and r["source_id"].startswith("trecqa:") for r in rows)
    datasets, counter = load_datasets(config.data, evaluation_texts=evaluation_texts)
    synthetic = next(d for d in datasets if d.spec.name == "trecqa_synthetic")
    assert len(synthetic.samples) == hn["rows_written"] and synthetic.spec.weight == 0.5
    assert all(len(s.negatives) >= 3 for s in synthetic.samples)
    info = mixture_info(config.data, datasets, counter)
    real, syn = info.names.index("trecqa"), info.names.index("trecqa_synthetic")
    expected = 0.5 * (info.sizes[syn] / info.sizes[real]) ** 0.5  # weight * n^alpha, alpha = 0.5
    assert abs(info.probabilities[syn] / info.probabilities[real] - expected) < 1e-6


def test_data_config_decontaminate_option(tmp_path):
    from qzhou_jax.synthesis.checks import tokens

    test_text = next(s.text_a for s in shared_data.read_sts("stsb", "test") if len(tokens(s.text_a)) >= 14)
    rows = [{"query": test_text, "pos": ["a passage"]}, {"query": "a clean query", "pos": [test_text + " Yes."]},
            {"query": "another clean query", "pos": ["another passage"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = dict(name="mine", source=f"jsonl:{tmp_path / 'train.jsonl'}", task="retrieval")
    counter = SkipCounter()
    assert len(load_samples(DatasetSpec.from_dict(raw, "test"), counter)) == 3
    samples = load_samples(DatasetSpec.from_dict({**raw, "decontaminate": "STSBenchmark"}, "test"), counter,
                           evaluation_texts=evaluation_texts)
    assert [s.query for s in samples] == ["another clean query"]
    assert counter.total("mine") == 2
