"""The paper's mix: every named set is listed, `prepare` fetches it from (a local copy of) the hub layouts, and
configs/stage1.py:paper / stage2.py:paper train from the prepared folders."""
from pathlib import Path

import pytest

from qzhou_jax.data import hub, paper_mix
from qzhou_jax.config import load_config
from qzhou_jax.data.inspect import data_block
from qzhou_jax.data.pipeline import build_pipeline
from qzhou_jax.data.prepare import prepare

CONFIGS = Path(__file__).parents[2] / "configs"
NAMED = {"bge_en_icl", "bge_m3", "bge_gemma2", "e5", "msmarco", "nq", "eli5", "hotpotqa", "miracl", "squad", "fever",
         "quora_duplicates", "dureader"}

# One small file per set, at the paths the dataset cards describe (plus files the globs must not pick up).
LAYOUT = {
    "Shitao/bge-m3-data": ["en/MSMARCO/msmarco_len-0-500.jsonl", "en/MSMARCO/msmarco_len-500-1000.jsonl",
                           "en/NQ/nq_len-0-500.jsonl", "en/HotpotQA/hotpotqa_len-0-500.jsonl",
                           "en/SQuAD/squad_len-0-500.jsonl", "zh/DuReader/dureader_len-0-500.jsonl",
                           "multilingual/MIRACL/miracl_ar_len-0-500.jsonl", "zh/T2Ranking/t2ranking_len-0-500.jsonl",
                           "README.md"],
    "cfli/bge-e5data": ["data/eli5.jsonl", "data/fever.jsonl", "data/quora_duplicates.jsonl", "data/trivia.jsonl",
                        "README.md"],
    "cfli/bge-full-data": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
    "hanhainebula/bge-multilingual-gemma2-data": ["en/x.jsonl", "zh/y.jsonl"],
}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, write_jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "hub"
    for repo, files in LAYOUT.items():
        for i, name in enumerate(files):
            path = root / repo / name
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"query": f"{name} q{j}", "pos": [f"{name} p{j}"], "neg": [f"{name} n{j} {k}" for k in range(5)]}
                    for j in range(6)]
            if name.endswith(".parquet"):
                pq.write_table(pa.Table.from_pylist(rows), path)
            elif name.endswith(".jsonl"):
                write_jsonl(path, rows)
            else:
                path.write_text("not data\n")
    monkeypatch.setattr(hub, "list_repo_files", lambda repo: sorted(
        str(p.relative_to(root / repo)) for p in (root / repo).rglob("*") if p.is_file()))
    monkeypatch.setattr(hub, "download", lambda repo, name: str(root / repo / name))
    return root


def test_every_named_set_has_source_task_transform_and_instruction():
    entries = paper_mix.hub_datasets()
    assert {e["name"] for e in entries} == NAMED and len(entries) == len(NAMED)
    for e in entries:
        repo, pattern = hub.parse(e["source"].removeprefix("hub:"))
        assert e["task"] == "retrieval" and e["transform"] == "retrieval" and e["instruction"] and pattern
        assert (e["max_len_query"], e["max_len_passage"], e["num_negatives"]) == (256, 1536, 4)


def test_prepare_the_paper_mix_then_train_from_it(tmp_path, fake_hub):
    out = tmp_path / "paper_mix"
    manifests = prepare(data_block(load_config(str(CONFIGS / "paper_mix.py"))), out, log=lambda _: None)
    sizes = {name: m["num_samples"] for name, m in manifests.items()}
    assert sizes["msmarco"] == 12 and sizes["bge_en_icl"] == 12 and sizes["bge_gemma2"] == 12
    assert sizes["bge_m3"] == 6  # only t2ranking: the separately listed sets are excluded from the bundle
    assert sizes["eli5"] == sizes["fever"] == sizes["quora_duplicates"] == sizes["e5"] == 6
    assert {s["file"] for s in manifests["miracl"]["sources"]} == {"multilingual/MIRACL/miracl_ar_len-0-500.jsonl"}

    for stage in ("stage1", "stage2"):
        config = data_block(load_config(f"{CONFIGS / stage}.py:paper:{out}"))
        config.batch_size = dict(retrieval=4, pair_score=8, classification=4)
        dataset, info = build_pipeline(config, None, process_index=0, process_count=1)
        assert set(paper_mix.PAPER_MIX) <= set(info.names)
        msmarco = info.names.index("msmarco")
        assert info.sizes[msmarco] == 12 and info.num_candidates[msmarco] == 5
        batch = next(iter(dataset))
        assert len(batch["anchor"]) == info.batch_sizes[int(batch["dataset_id"][0])]
    offline = data_block(load_config(str(CONFIGS / "stage1.py")))
    assert [d["name"] for d in offline.datasets] == ["scifact", "trecqa", "cmrc2018"]  # shared data by default
    with pytest.raises(Exception, match="unknown variant"):  # absl wraps it as IllegalFlagValueError
        load_config(f"{CONFIGS / 'stage1.py'}:papers")
