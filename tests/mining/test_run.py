"""End to end against a NumPy brute-force reference: every score of every query, a stable full sort, the
documented selection rules written out plainly, the same per-row seed. Embeddings for the reference come from
encode.py's plain Encoder path (its own weight loading), on the same texts in the same batches."""
import dataclasses
import json
import unicodedata

import numpy as np
import pytest

from qzhou_jax.encode import Encoder
from qzhou_jax.mining.model import load_encoder
from qzhou_jax.mining.run import MineConfig, mine
from qzhou_jax.mining.select import SelectConfig
from qzhou_jax.tokenizer import format_query
from tests.cli_run import run_main
from tests.mining.conftest import INSTRUCTION

BATCH, MAX_LENGTH = 16, 64
WINDOW = (10, 30)


def norm(text):
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@pytest.fixture(scope="module")
def reference(model_dir, data):
    """Corpus, [Q, N] float64 scores and each query's stable descending order."""
    rows = data["rows"]
    texts, key = [], {}
    for t in [t for r in rows for t in r["pos"] + r.get("neg", [])] + data["extra"]:
        if norm(t) not in key:
            key[norm(t)] = len(texts)
            texts.append(t)
    encoder = Encoder.from_pretrained(model_dir, max_length=MAX_LENGTH, batch_size=BATCH)
    passages = encoder.encode(texts).astype(np.float64)
    queries = encoder.encode([format_query(r["query"], r.get("prompt") or INSTRUCTION) for r in rows])
    scores = queries.astype(np.float64) @ passages.T
    order = np.argsort(-scores, axis=1, kind="stable")
    return dict(texts=texts, key=key, scores=scores, order=order)


def reference_select(ref, rows, cfg: SelectConfig):
    """{row index: [(text, rank)]} for the kept rows."""
    out = {}
    a, b = cfg.window
    for i, row in enumerate(rows):
        s, order = ref["scores"][i], ref["order"][i]
        pos = [ref["key"][norm(p)] for p in row["pos"]]
        ranks = {int(j): r + 1 for r, j in enumerate(order)}
        if cfg.min_positive_rank is not None and min(ranks[p] for p in pos) > cfg.min_positive_rank:
            continue
        if cfg.min_positive_score is not None and max(s[p] for p in pos) < cfg.min_positive_score:
            continue
        existing = list(dict.fromkeys(ref["key"][norm(n)] for n in row.get("neg", [])))
        kept = [(ref["texts"][j], ranks[j] if ranks[j] <= cfg.depth else None) for j in existing] \
            if cfg.keep_existing else []
        s_pos = min(s[p] for p in pos)
        limit = np.inf
        if cfg.relative_margin is not None:
            limit = s_pos - cfg.relative_margin
        if cfg.max_score_ratio is not None:
            limit = cfg.max_score_ratio * s_pos
        taken = set(pos) | (set(existing) if cfg.keep_existing else set())
        eligible = [r for r in range(a, b) if order[r] not in taken and s[order[r]] <= limit]
        need = max(cfg.negatives - len(kept), 0)
        picks = np.random.default_rng((cfg.seed, i)).choice(len(eligible), min(need, len(eligible)), replace=False)
        out[i] = kept + [(ref["texts"][order[eligible[p]]], eligible[p] + 1) for p in sorted(picks.tolist())]
    return out


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_encoder(model_dir, max_length=MAX_LENGTH, batch_size=BATCH)


def run(tmp_path, data, encoder, select, **kwargs):
    out = tmp_path / "out.jsonl"
    cfg = MineConfig(model="unused", input=data["input"], output=str(out), corpus=data["corpus"], select=select,
                     instruction=INSTRUCTION, cache=str(data["root"] / "cache"), batch_size=BATCH,
                     max_length=MAX_LENGTH, encode_chunk=1000, query_batch=16, corpus_chunk=24, progress=False,
                     **kwargs)
    stats = mine(cfg, encoder=encoder)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, stats


def window_quantiles(ref, rows, q=0.5):
    """Median (s_pos - s) and s / s_pos over every window candidate: a margin and a ratio that bite."""
    gaps, ratios = [], []
    for i, row in enumerate(rows):
        s = ref["scores"][i]
        s_pos = min(s[ref["key"][norm(p)]] for p in row["pos"])
        window = s[ref["order"][i][WINDOW[0]:WINDOW[1]]]
        gaps += list(s_pos - window)
        ratios += list(window / s_pos)
    return float(np.quantile(gaps, q)), float(np.quantile(ratios, q))


def check_equal(got_rows, expected, data):
    input_rows = data["rows"]
    assert len(got_rows) == len(expected)
    for got, i in zip(got_rows, sorted(expected)):
        assert got["query"] == input_rows[i]["query"] and got["pos"] == input_rows[i]["pos"]
        assert [(t, m["rank"]) for t, m in zip(got["neg"], got["neg_meta"])] == expected[i], i
        positives = {norm(p) for p in got["pos"]}
        for text, meta in zip(got["neg"], got["neg_meta"]):
            assert norm(text) not in positives
            if meta["source"] == "mined":
                assert WINDOW[0] < meta["rank"] <= WINDOW[1]


def test_negatives_equal_brute_force(tmp_path, data, encoder, reference):
    cfg = SelectConfig(negatives=4, window=WINDOW, seed=3)
    rows, stats = run(tmp_path, data, encoder, cfg)
    expected = reference_select(reference, data["rows"], cfg)
    check_equal(rows, expected, data)
    assert stats["rows_out"] == len(data["rows"]) and stats["mined_negatives"] == 4 * len(data["rows"])
    for got in rows:  # scores are the brute-force scores
        i = next(k for k, r in enumerate(data["rows"]) if r["query"] == got["query"])
        for text, meta in zip(got["neg"], got["neg_meta"]):
            assert abs(meta["score"] - reference["scores"][i, reference["key"][norm(text)]]) < 1e-5
    # Normalised duplicates of positives really were in the corpus file, and the prompt went into the queries.
    assert sum(norm(t) in {norm(p) for r in data["rows"] for p in r["pos"]} for t in data["extra"]) >= 16
    plain = SelectConfig(negatives=4, window=WINDOW, seed=4)
    assert reference_select(reference, data["rows"], plain) != expected  # the seed matters


@pytest.mark.parametrize("rule", ["relative_margin", "max_score_ratio"])
def test_false_negative_rules(tmp_path, data, encoder, reference, rule):
    margin, ratio = window_quantiles(reference, data["rows"])
    cfg = SelectConfig(negatives=4, window=WINDOW, **{rule: margin if rule == "relative_margin" else ratio})
    rows, stats = run(tmp_path, data, encoder, cfg)
    expected = reference_select(reference, data["rows"], cfg)
    check_equal(rows, expected, data)
    unfiltered = reference_select(reference, data["rows"], dataclasses.replace(cfg, **{rule: None}))
    assert expected != unfiltered  # the rule rejected candidates
    assert stats["rows_short_of_negatives"] == sum(len(v) < 4 for v in expected.values()) > 0
    for got in rows:
        i = next(k for k, r in enumerate(data["rows"]) if r["query"] == got["query"])
        s_pos = min(reference["scores"][i, reference["key"][norm(p)]] for p in got["pos"])
        limit = s_pos - margin if rule == "relative_margin" else ratio * s_pos
        assert all(m["score"] <= limit + 1e-6 for m in got["neg_meta"])


def test_keep_existing_and_positive_filters(tmp_path, data, encoder, reference):
    cfg = SelectConfig(negatives=3, window=WINDOW, keep_existing=True, seed=1)
    rows, _ = run(tmp_path, data, encoder, cfg)
    check_equal(rows, reference_select(reference, data["rows"], cfg), data)
    with_existing = [r for r, src in zip(rows, data["rows"]) if src.get("neg")]
    assert with_existing and all(r["neg"][0] == src["neg"][0] and r["neg_meta"][0]["source"] == "existing"
                                 and len(r["neg"]) == 3 for r, src in zip(rows, data["rows"]) if src.get("neg"))

    ranks = [min(int(np.flatnonzero(reference["order"][i] == reference["key"][norm(p)])[0]) + 1 for p in r["pos"])
             for i, r in enumerate(data["rows"])]
    threshold = int(np.median(ranks))
    cfg = SelectConfig(negatives=2, window=WINDOW, min_positive_rank=threshold)
    rows, stats = run(tmp_path, data, encoder, cfg)
    expected = reference_select(reference, data["rows"], cfg)
    check_equal(rows, expected, data)
    assert stats["dropped_positive_rank"] == sum(r > threshold for r in ranks) == len(data["rows"]) - len(expected) > 0

    best = [max(reference["scores"][i, reference["key"][norm(p)]] for p in r["pos"]) for i, r in enumerate(data["rows"])]
    cut = float(np.median(best))
    cfg = SelectConfig(negatives=2, window=WINDOW, min_positive_score=cut)
    rows, stats = run(tmp_path, data, encoder, cfg)
    expected = reference_select(reference, data["rows"], cfg)
    check_equal(rows, expected, data)
    assert stats["dropped_positive_score"] == len(data["rows"]) - len(expected) > 0


def test_eight_devices_equal_one(tmp_path, data, encoder):
    cfg = SelectConfig(negatives=4, window=WINDOW, seed=5)
    one, _ = run(tmp_path / "a", data, encoder, cfg, num_devices=1)
    eight, stats = run(tmp_path / "b", data, encoder, cfg)
    assert stats["devices"] == 8
    assert [(r["neg"], [m["rank"] for m in r["neg_meta"]]) for r in one] == \
        [(r["neg"], [m["rank"] for m in r["neg_meta"]]) for r in eight]
    np.testing.assert_allclose([m["score"] for r in one for m in r["neg_meta"]],
                               [m["score"] for r in eight for m in r["neg_meta"]], atol=1e-6)


def test_window_beyond_corpus_is_an_error(tmp_path, data, encoder):
    with pytest.raises(ValueError, match=r"rank window 10:1000 .* beyond the corpus of \d+ passages"):
        run(tmp_path, data, encoder, SelectConfig(window=(10, 1000)))


def _cli(argv, capsys):
    """`python -m qzhou_jax.mine` as a user runs it: (exit status, stdout, stderr)."""
    from qzhou_jax.cli import mine as mine_cli

    return run_main(mine_cli.main, argv, capsys)


def test_cli_exit_status_says_whether_every_row_got_its_negatives(tmp_path, model_dir, data, capsys):
    args = ["--model", model_dir, "--input", data["input"], "--output", str(tmp_path / "out.jsonl"), "--corpus",
            data["corpus"], "--instruction", INSTRUCTION, "--batch-size", "16", "--max-length", "64",
            "--cache", str(tmp_path / "cache")]
    status, out, err = _cli([*args, "--range", "0:3", "--negatives", "4"], capsys)  # 3 ranks cannot give 4
    stats = json.loads(out.strip().splitlines()[-1])
    assert status == 1 and stats["rows_short_of_negatives"] == stats["rows_out"] == len(data["rows"])
    assert err.strip().splitlines()[-1] == (
        f"error: {tmp_path}/out.jsonl: {len(data['rows'])} of {len(data['rows'])} rows have fewer than --negatives 4 "
        f"negatives (too few eligible passages in --range 0:3 after the false-negative rule); the rows are written; "
        f"widen --range or relax the rule to fill them")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(data["rows"])
    status, out, err = _cli([*args, "--range", "0:30", "--negatives", "4"], capsys)
    assert status == 0 and json.loads(out.strip().splitlines()[-1])["rows_short_of_negatives"] == 0


def test_cli_usage_errors_are_one_line(tmp_path, model_dir, data, capsys):
    args = ["--input", data["input"], "--output", str(tmp_path / "out.jsonl"), "--max-length", "64"]
    status, _, err = _cli(["--model", model_dir, *args, "--range", "10:1000"], capsys)
    assert status == 2 and err.startswith("error: rank window 10:1000 (search depth 1000) is beyond the corpus of ")
    assert err.count("\n") == 1 and "Traceback" not in err
    status, _, err = _cli(["--model", model_dir, *args, "--range", "30:10"], capsys)
    assert (status, err) == (2, "error: rank window 30:10 is empty; expected 0 <= start < end\n")
    (tmp_path / "empty_model").mkdir()
    status, _, err = _cli(["--model", str(tmp_path / "empty_model"), *args], capsys)
    assert (status, err) == (2, f"error: --model {tmp_path}/empty_model: no config.json there, so it is not an HF "
                                f"Qwen2 directory or a qzhou-jax export\n")
    assert not (tmp_path / "out.jsonl").exists()
