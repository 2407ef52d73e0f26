"""prepare -> ArrayRecord + manifest -> `prepared:` sources: same batches as in memory, lazy reads, crash-safe."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grain
import numpy as np
import pytest

from qzhou_jax.config import load_config
from qzhou_jax.data import hub, prepared
from qzhou_jax.data.pipeline import build_pipeline, load_datasets
from qzhou_jax.data.prepare import prepare

WORDS = "cat dog bird fish red blue green big small one two three four five six seven eight nine ten".split()
REPO = Path(__file__).parents[2]


def sentence(rng, n=None):
    return " ".join(rng.choice(WORDS, size=n or int(rng.integers(1, 9))))


def write_inputs(folder, write_jsonl, n_ret=40):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    write_jsonl(folder / "ret.jsonl.gz", [
        {"query": sentence(rng), "pos": [sentence(rng) for _ in range(1 + i % 2)],
         "neg": [sentence(rng) for _ in range(i % 5)]} for i in range(n_ret)], gz=True)
    pq.write_table(pa.table({"s1": [sentence(rng) for _ in range(30)], "s2": [sentence(rng) for _ in range(30)],
                             "gold": rng.uniform(0, 5, 30)}), folder / "sts.parquet")
    write_jsonl(folder / "cls.jsonl", [{"text": sentence(rng), "label": ["a", "b", "c"][i % 3]} for i in range(45)])


def in_memory_config(folder):
    return dict(
        datasets=[
            dict(name="ret", source=f"jsonl:{folder}/ret.jsonl.gz", task="retrieval", num_negatives=2,
                 instruction="find the passage"),
            dict(name="sts", source=f"parquet:{folder}/sts.parquet", task="pair_score",
                 fields=dict(text_a="s1", text_b="s2", score="gold"), instruction="same meaning"),
            dict(name="cls", source=f"jsonl:{folder}/cls.jsonl", task="classification", num_negatives=3,
                 instruction="classify", max_examples=30),
        ],
        defaults=dict(max_len_query=8, max_len_passage=6), alpha=0.5, seed=3, num_threads=2,
        batch_size=dict(retrieval=4, pair_score=6, classification=4), buckets=(4, 8))


def prepared_config(config, out):
    """The same mixture read from OUT: names, order and batch settings kept, dataset fields from the manifests."""
    datasets = [dict(name=d["name"], source=f"prepared:{out}/{d['name']}") for d in config["datasets"]]
    return {**{k: v for k, v in config.items() if k != "defaults"}, "datasets": datasets}


def take(dataset, n):
    it = iter(dataset)
    return [next(it) for _ in range(n)]


def test_prepared_batches_equal_in_memory_batches(tmp_path, write_jsonl, tokenizer):
    write_inputs(tmp_path, write_jsonl)
    config = in_memory_config(tmp_path)
    manifests = prepare(config, tmp_path / "out", records_per_shard=16, log=lambda _: None)
    assert {k: m["num_samples"] for k, m in manifests.items()} == {"ret": 60, "sts": 30, "cls": 30}
    assert manifests["ret"]["shards"] == [f"data-0000{k}-of-00004.array_record" for k in range(4)]
    assert manifests["sts"]["spec"]["instruction"] == "same meaning" and manifests["cls"]["labels"] == ["a", "b", "c"]
    assert manifests["ret"]["sources"][0]["sha256"] and manifests["ret"]["lengths"]["query_chars"]["max"] > 0
    index = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert index["datasets"]["sts"]["num_samples"] == 30

    memory, info_m = build_pipeline(config, tokenizer, process_index=0, process_count=1)
    lazy, info_p = build_pipeline(prepared_config(config, tmp_path / "out"), tokenizer, process_index=0,
                                  process_count=1)
    assert info_p.sizes == info_m.sizes == [60, 30, 30] and info_p.tasks == info_m.tasks
    np.testing.assert_array_equal(info_p.probabilities, info_m.probabilities)
    assert info_p.label_vocabularies == info_m.label_vocabularies
    seen = set()
    for a, b in zip(take(memory, 60), take(lazy, 60)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        seen.add(int(a["dataset_id"][0]))
    assert seen == {0, 1, 2}


def test_records_are_read_lazily_and_per_host(tmp_path, write_jsonl):
    write_inputs(tmp_path, write_jsonl, n_ret=3000)  # 4500 (query, positive) samples
    config = in_memory_config(tmp_path)
    config["datasets"] = config["datasets"][:1]
    prepare(config, tmp_path / "out", records_per_shard=1000, log=lambda _: None)
    reads = []
    for host in (0, 1):
        cfg = dict(prepared_config(config, tmp_path / "out"), num_threads=1, prefetch_buffer_size=1)
        datasets, _ = load_datasets(cfg)
        assert datasets[0].samples.reads == 0  # opening reads no record: n_i comes from the manifest
        dataset, info = build_pipeline(cfg, None, process_index=host, process_count=2, datasets=datasets)
        assert info.sizes == [4500]
        batches = take(dataset, 5)
        assert all(len(b["anchor"]) == 2 for b in batches)  # per-host half of the global batch of 4
        reads.append(datasets[0].samples.reads)
    assert all(10 <= r <= 40 for r in reads), reads  # 5 batches x 2 rows (+ prefetch), never the 4500


SLOW_PREPARE = """
import sys, time
import qzhou_jax.data.prepare as p
from qzhou_jax.cli.prepare import main
write = p._write_shard
def slow(*args):
    time.sleep(0.3)
    write(*args)
p._write_shard = slow
sys.exit(main(sys.argv[1:]))
"""


def write_config_file(tmp_path, config):
    path = tmp_path / "cfg.py"
    path.write_text(f"import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({{'data': {config!r}}})\n")
    return path


def test_kill_mid_way_then_rerun_gives_the_uninterrupted_shards(tmp_path, write_jsonl):
    write_inputs(tmp_path, write_jsonl, n_ret=200)  # 300 retrieval samples -> 15 shards of 20
    cfg = write_config_file(tmp_path, in_memory_config(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["--config", str(cfg), "--records-per-shard", "20"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, *argv, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = tmp_path / "killed" / "ret"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("data-*.array_record"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in folder.glob("data-*.array_record"))
    assert 3 <= len(done) < 15 and not (folder / "manifest.json").exists()  # really interrupted
    assert subprocess.run([sys.executable, "-m", "qzhou_jax.data.prepare", *argv, "--out", str(tmp_path / "killed")],
                          env=env, capture_output=True).returncode == 0
    prepare(in_memory_config(tmp_path), tmp_path / "clean", records_per_shard=20, log=lambda _: None)
    for name in ("ret", "sts", "cls"):
        a, b = tmp_path / "killed" / name, tmp_path / "clean" / name
        shards = sorted(p.name for p in b.glob("data-*.array_record"))
        assert sorted(p.name for p in a.glob("data-*.array_record")) == shards
        for shard in shards:
            assert (a / shard).read_bytes() == (b / shard).read_bytes(), (name, shard)
        assert not list(a.glob(".*.tmp"))
        ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
        assert ma["samples_sha256"] == mb["samples_sha256"] and ma["num_samples"] == mb["num_samples"]
    records = grain.sources.ArrayRecordDataSource([str(a / s) for s in shards])
    assert len(records) == 30


def test_rerun_with_other_samples_is_refused(tmp_path, write_jsonl):
    write_inputs(tmp_path, write_jsonl)
    config = in_memory_config(tmp_path)
    prepare(config, tmp_path / "out", log=lambda _: None)
    prepare(config, tmp_path / "out", log=lambda _: None)  # finished: skipped
    write_jsonl(tmp_path / "cls.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(40)])
    with pytest.raises(ValueError, match="made from other samples"):
        prepare(config, tmp_path / "out", log=lambda _: None)


def test_hub_source_prepared_from_a_local_copy_of_the_repo_layout(tmp_path, write_jsonl, monkeypatch):
    repo = tmp_path / "bge-m3-data"
    (repo / "en" / "MSMARCO").mkdir(parents=True)
    write_jsonl(repo / "en" / "MSMARCO" / "msmarco_len-0-500.jsonl",
                [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}", f"m{i}"]} for i in range(5)])
    write_jsonl(repo / "en" / "MSMARCO" / "msmarco_len-500-1000.jsonl",
                [{"query": f"long q{i}", "pos": [f"long p{i}"], "neg": []} for i in range(3)])
    (repo / "en" / "NQ").mkdir()
    write_jsonl(repo / "en" / "NQ" / "nq_len-0-500.jsonl", [{"query": "nq", "pos": ["a"]}])  # not matched
    calls = []
    monkeypatch.setattr(hub, "list_repo_files", lambda r: sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()))
    monkeypatch.setattr(hub, "download", lambda r, f: calls.append((r, f)) or str(repo / f))
    config = dict(datasets=[dict(name="msmarco", source="hub:Shitao/bge-m3-data:**/msmarco_len-*.jsonl",
                                 task="retrieval", instruction="web search")], batch_size=dict(retrieval=2))
    manifests = prepare(config, tmp_path / "out", log=lambda _: None)
    assert manifests["msmarco"]["num_samples"] == 8
    assert {s["file"] for s in manifests["msmarco"]["sources"]} == {
        "en/MSMARCO/msmarco_len-0-500.jsonl", "en/MSMARCO/msmarco_len-500-1000.jsonl"}
    assert {f for _, f in calls} == {"en/MSMARCO/msmarco_len-0-500.jsonl", "en/MSMARCO/msmarco_len-500-1000.jsonl"}
    samples = prepared.PreparedSamples(tmp_path / "out" / "msmarco")
    assert samples[0].query == "q0" and samples[0].negatives == ("n0", "m0") and samples[7].query == "long q2"
    with pytest.raises(FileNotFoundError, match="no file of dataset repo"):
        hub.matching_files("Shitao/bge-m3-data:**/dureader*.jsonl")


def test_parallel_workers_and_host_shards_give_the_serial_result(tmp_path, write_jsonl):
    write_inputs(tmp_path, write_jsonl)
    config = in_memory_config(tmp_path)
    serial = prepare(config, tmp_path / "serial", records_per_shard=16, log=lambda _: None)
    parallel = prepare(config, tmp_path / "parallel", records_per_shard=16, workers=2, log=lambda _: None)
    first = prepare(config, tmp_path / "hosts", records_per_shard=16, shard=(0, 2), log=lambda _: None)
    assert sorted(first) == ["cls", "ret"] and not (tmp_path / "hosts" / "manifest.json").exists()
    second = prepare(config, tmp_path / "hosts", records_per_shard=16, shard=(1, 2), log=lambda _: None)
    assert sorted(second) == ["sts"] and (tmp_path / "hosts" / "manifest.json").exists()  # the last host indexes
    for name, m in serial.items():
        other = {**parallel, **first, **second}[name]
        assert other["samples_sha256"] == m["samples_sha256"] and other["shards"] == m["shards"]
        for shard in m["shards"]:
            assert (tmp_path / "parallel" / name / shard).read_bytes() == (tmp_path / "serial" / name / shard).read_bytes()


def test_opening_a_prepared_dataset_opens_no_shard_until_its_records_are_read(tmp_path, write_jsonl, monkeypatch):
    from array_record.python import array_record_data_source as ards

    write_inputs(tmp_path, write_jsonl)
    manifests = prepare(in_memory_config(tmp_path), tmp_path / "out", records_per_shard=16, log=lambda _: None)
    n = manifests["ret"]["num_samples"]
    assert manifests["ret"]["shard_records"] == [16] * (n // 16) + [n % 16] * (n % 16 > 0) and n > 32
    opened = []
    real = ards.array_record_module.ArrayRecordReader
    monkeypatch.setattr(ards.array_record_module, "ArrayRecordReader",
                        lambda path, *a, **k: opened.append(os.path.basename(path)) or real(path, *a, **k))
    samples = prepared.PreparedSamples(tmp_path / "out" / "ret", verify="off")
    assert len(samples) == n and opened == []  # counts come from the manifest
    assert samples[20] == prepared.PreparedSamples(tmp_path / "out" / "ret", verify="off")[20]
    assert len(opened) == 2 and all(name.startswith("data-00001-of-") for name in opened)  # record 20's shard only
    opened.clear()
    checked = prepared.PreparedSamples(tmp_path / "out" / "ret")  # the default quick check at start-up
    assert sorted(opened) == manifests["ret"]["shards"] and checked.reads == 0  # each index once, no record

    manifest = json.loads((tmp_path / "out" / "ret" / "manifest.json").read_text())
    manifest["shard_records"][-1] += 1
    (tmp_path / "out" / "ret" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="shard_records"):
        prepared.PreparedSamples(tmp_path / "out" / "ret")


def test_group_size_is_recorded_and_grains_advisory_is_silenced_for_prepared_shards_only(
        tmp_path, write_jsonl, caplog):
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    write_inputs(tmp_path, write_jsonl)
    config = in_memory_config(tmp_path)
    grouped = prepare(config, tmp_path / "g4", records_per_shard=16, group_size=4, log=lambda _: None)
    single = prepare(config, tmp_path / "g1", records_per_shard=16, group_size=1, log=lambda _: None)
    folder = tmp_path / "g4" / "ret"
    assert grouped["ret"]["group_size"] == 4 and single["ret"]["group_size"] == 1
    first = ArrayRecordReader(str(folder / grouped["ret"]["shards"][0]))
    assert "group_size:4," in first.writer_options_string()  # really written with the recorded group size
    first.close()
    with caplog.at_level("INFO"):
        a, b = prepared.PreparedSamples(folder), prepared.PreparedSamples(tmp_path / "g1" / "ret")
        n = len(a)
        assert [a[i] for i in range(n)] == [b[i] for i in range(n)]  # same samples either way
    assert not [r for r in caplog.records if "requires group size 1" in r.getMessage()]
    assert any("4 records per chunk" in r.getMessage() for r in caplog.records)  # the choice is said once instead

    other = tmp_path / "other.array_record"  # not a prepared shard: Grain's advice still reaches the user
    writer = ArrayRecordWriter(str(other), "group_size:4")
    writer.write(b"x")
    writer.close()
    caplog.clear()
    assert grain.sources.ArrayRecordDataSource([str(other)])[0] == b"x"
    assert [r for r in caplog.records if "requires group size 1" in r.getMessage()]

    with pytest.raises(ValueError, match=r"another group size \(4 vs 8\)"):  # a rerun must not mix chunkings
        prepare(config, tmp_path / "g4", records_per_shard=16, group_size=8, log=lambda _: None)

    manifest = json.loads((folder / "manifest.json").read_text())  # written before group_size was recorded
    del manifest["group_size"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert prepared.PreparedSamples(folder).group_size == 1 and prepared.PreparedSamples(folder)[3] == b[3]


def test_group_size_below_one_is_a_usage_error_naming_the_flag(tmp_path, write_jsonl, capsys):
    from qzhou_jax.cli.prepare import main

    write_inputs(tmp_path, write_jsonl)
    cfg = write_config_file(tmp_path, in_memory_config(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(cfg), "--out", str(tmp_path / "out"), "--group-size", "0"])
    assert exit_info.value.code == 2 and "--group-size 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def train_config_file(path, datasets, **data):
    """A training config: configs/demo.py's stage 1 (tiny model) on `datasets`, nothing evaluated or exported."""
    path.write_text(textwrap.dedent(f"""
        import importlib.util

        spec = importlib.util.spec_from_file_location("demo_config", {str(REPO / "configs" / "demo.py")!r})
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)


        def get_config():
            c = demo.stage1()
            c.data.datasets = {datasets!r}
            c.data.batch_size = dict(retrieval=8, pair_score=8, classification=8)
            c.data.buckets = (4, 8)
            for key, value in {data!r}.items():
                c.data[key] = value
            c.eval.tasks = ()
            c.export.at_end = False
            c.plot = False
            return c
        """))
    return path


def test_prepare_applies_the_skip_limit_and_training_checks_and_reports_the_prepared_skips(
        tmp_path, write_jsonl, tokenizer, capsys):
    from qzhou_jax.cli import train as train_cli
    from qzhou_jax.cli import inspect as inspect_cli
    from qzhou_jax.cli.prepare import main as prepare_main

    rows = [{"query": f"what is {WORDS[i % len(WORDS)]} {i}", "pos": [f"{WORDS[(i + 3) % len(WORDS)]} passage {i}"]}
            for i in range(100)]
    write_jsonl(tmp_path / "ret.jsonl", rows[:50] + ["{broken", {"pos": ["a row without its query"]}] + rows[50:])
    data = dict(datasets=[dict(name="ret", source=f"jsonl:{tmp_path}/ret.jsonl", task="retrieval", num_negatives=0,
                               max_len_query=8, max_len_passage=8)],
                batch_size=dict(retrieval=8), buckets=(4, 8), skip_invalid=True, max_skipped_fraction=0.01)
    cfg = write_config_file(tmp_path, data)
    out = tmp_path / "out"
    tokenizer.save_pretrained(tmp_path / "tok")
    inspect_args = ["--batches", "1", "--hist-batches", "1", "--tokenizer", str(tmp_path / "tok")]
    refused = ("2 malformed rows skipped against 100 samples kept (2.0%), above data.max_skipped_fraction = 0.01: "
               "1 x malformed JSON")
    # 2 bad rows of 102 are above the default limit (1%): prepare refuses them as data.inspect does, one line, exit 2.
    for cli, extra in ((prepare_main, ["--out", str(out)]), (inspect_cli.main, inspect_args)):
        with pytest.raises(SystemExit) as stop:
            cli(["--config", str(cfg), *extra])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and refused in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / "ret" / "manifest.json").exists()

    # Raised knowingly, it prepares; the manifest keeps the malformed count against the samples read.
    assert prepare_main(["--config", str(cfg), "--out", str(out), "--config.data.max_skipped_fraction=0.05"]) == 0
    manifest = json.loads((out / "ret" / "manifest.json").read_text())
    assert manifest["malformed_rows"] == 2 and manifest["samples_read"] == 100 and manifest["num_samples"] == 100
    assert sum(manifest["skipped"].values()) == 2

    # Training from the prepared folder applies its own limit to those counts (the same rule on every path) ...
    datasets = [dict(name="ret", source=f"prepared:{out}/ret")]
    train_cfg = train_config_file(tmp_path / "train_cfg.py", datasets)
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--config", str(train_cfg), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"dataset 'ret' (prepared:{out}/ret, split 'train'): {refused}" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step

    # ... and reports them, as it does for data read in memory (train prints info.skipped.report()).
    (tmp_path / "p").mkdir()
    pcfg = write_config_file(tmp_path / "p", dict(data, datasets=datasets, max_skipped_fraction=0.05))
    assert inspect_cli.main(["--config", str(pcfg), *inspect_args]) == 0
    printed = capsys.readouterr().out
    assert "ret: 2 rows skipped" in printed and "malformed JSON" in printed and "field 'query' is missing" in printed
    _, info = build_pipeline(load_config(str(pcfg)).data, None, process_index=0, process_count=1)
    assert "ret: 2 rows skipped" in info.skipped.report()


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:len(data) // 2])
    else:  # 64 bytes flipped in the middle
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:])


def _same_files(a, b):
    names = sorted(p.name for p in b.iterdir() if p.is_file() and p.name != "manifest.json")
    assert sorted(p.name for p in a.iterdir() if p.is_file() and p.name != "manifest.json") == names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_damaged_shards_are_named_at_start_up_and_a_rerun_of_prepare_repairs_them(
        tmp_path, write_jsonl, tokenizer, capsys):
    from qzhou_jax.cli import train as train_cli
    from qzhou_jax.cli import inspect as inspect_cli
    from qzhou_jax.cli.prepare import main as prepare_main

    write_inputs(tmp_path, write_jsonl)
    config = in_memory_config(tmp_path)
    argv = ["--config", str(write_config_file(tmp_path, config)), "--records-per-shard", "16", "--out",
            str(tmp_path / "out")]
    assert prepare_main(argv) == 0
    prepare(config, tmp_path / "clean", records_per_shard=16, log=lambda _: None)
    capsys.readouterr()
    ret, cls = tmp_path / "out" / "ret", tmp_path / "out" / "cls"
    _damage(ret / "data-00001-of-00004.array_record", "truncate")
    (ret / "data-00002-of-00004.array_record").unlink()
    _damage(cls / "labels.npy", "flip")

    # Named at start-up, before a batch is drawn or a step compiled: data.inspect and training, one line, exit 2.
    (tmp_path / "p").mkdir()
    prepared_cfg = write_config_file(tmp_path / "p", prepared_config(config, tmp_path / "out"))
    tokenizer.save_pretrained(tmp_path / "tok")
    train_cfg = train_config_file(tmp_path / "train_cfg.py", prepared_config(config, tmp_path / "out")["datasets"])
    for cli, args in ((inspect_cli.main, ["--config", str(prepared_cfg), "--tokenizer", str(tmp_path / "tok")]),
                      (train_cli.main, ["--config", str(train_cfg), "--workdir", str(tmp_path / "run")])):
        with pytest.raises(SystemExit) as stop:
            cli(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{ret}: 2 of 4 prepared file(s) do not match manifest.json" in err
        assert f"{ret}/data-00001-of-00004.array_record (shard 2 of 4): " in err and "the manifest says" in err
        assert f"{ret}/data-00002-of-00004.array_record (shard 3 of 4): missing" in err
        assert "Rerun the `python -m qzhou_jax.data.prepare` command" in err
    assert not (tmp_path / "run" / "checkpoints").exists()

    # The same prepare command again verifies every file and rewrites the damaged ones: equal to a clean run's.
    assert prepare_main(argv) == 0
    out = capsys.readouterr().out
    assert "ret: 2 of 4 files did not match the manifest and were rewritten" in out, out
    assert "cls: 1 of 3 files did not match the manifest and were rewritten: labels.npy" in out
    assert "sts: already prepared (30 samples, 2 shards verified)" in out
    for name in ("ret", "sts", "cls"):
        _same_files(tmp_path / "out" / name, tmp_path / "clean" / name)
    assert prepare_main(argv) == 0
    assert "ret: already prepared (60 samples, 4 shards verified)" in capsys.readouterr().out
    assert inspect_cli.main(["--config", str(prepared_cfg), "--tokenizer", str(tmp_path / "tok")]) == 0

    # A folder prepared before shards were recorded in the manifest: rebuilt, compared, and the digests added.
    manifest = json.loads((ret / "manifest.json").read_text())
    del manifest["shard_files"]
    (ret / "manifest.json").write_text(json.dumps(manifest))
    _damage(ret / "data-00003-of-00004.array_record", "flip")
    assert prepare_main(argv) == 0
    assert "ret: 1 of 4 files did not match the manifest and were rewritten: data-00003" in capsys.readouterr().out
    assert json.loads((ret / "manifest.json").read_text())["shard_files"] == \
        json.loads((tmp_path / "clean" / "ret" / "manifest.json").read_text())["shard_files"]
    _same_files(ret, tmp_path / "clean" / "ret")


def test_flipped_bytes_name_their_shard_when_read_fail_the_full_check_and_are_repaired(
        tmp_path, write_jsonl, capsys):
    from qzhou_jax.cli import inspect as inspect_cli
    from qzhou_jax.cli.prepare import main as prepare_main

    rng = np.random.default_rng(0)
    write_jsonl(tmp_path / "ret.jsonl", [{"query": sentence(rng, 8), "pos": [sentence(rng, 30)]} for _ in range(3000)])
    config = dict(datasets=[dict(name="ret", source=f"jsonl:{tmp_path}/ret.jsonl", task="retrieval",
                                 num_negatives=0)], batch_size=dict(retrieval=64), num_threads=2)
    argv = ["--config", str(write_config_file(tmp_path, config)), "--out", str(tmp_path / "out")]
    assert prepare_main(argv) == 0
    shard = tmp_path / "out" / "ret" / "data-00000-of-00001.array_record"
    good = shard.read_bytes()
    assert len(good) > 4 * prepared.QUICK_BLOCK  # the middle is outside what the quick check reads
    _damage(shard, "flip")
    capsys.readouterr()

    # The quick start-up check reads the ends only; the damaged records, once read, name file and shard.
    samples = prepared.PreparedSamples(tmp_path / "out" / "ret")
    errors = []
    for i in range(len(samples)):
        try:
            samples[i]
        except prepared.DamagedShards as err:
            errors.append(str(err))
    assert errors and all(f"{shard}: record " in e and " of shard 1 of 1 (sample " in e for e in errors)
    assert "chunk data hash mismatch" in errors[0] and "Rerun the `python -m qzhou_jax.data.prepare`" in errors[0]
    dataset, _ = build_pipeline(prepared_config(config, tmp_path / "out"), None, process_index=0, process_count=1)
    with pytest.raises(prepared.DamagedShards, match=r"of shard 1 of 1 \(sample \d+\) cannot be read"):
        take(dataset, 150)  # three epochs: every record is drawn (through Grain's threads)

    # data.verify=full hashes every byte at start-up.
    (tmp_path / "p").mkdir()
    prepared_cfg = write_config_file(tmp_path / "p", dict(prepared_config(config, tmp_path / "out"), verify="quick"))
    with pytest.raises(SystemExit) as stop:
        inspect_cli.main(["--config", str(prepared_cfg), "--config.data.verify=full"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{shard} (shard 1 of 1): content differs from the manifest's sha256" in err

    assert prepare_main(argv) == 0
    assert "ret: 1 of 1 files did not match the manifest and were rewritten" in capsys.readouterr().out
    assert shard.read_bytes() == good
