"""End to end in-process against the scripted server: checks applied, retries, duplicates, resume from the journal,
determinism, shards + merge, decontamination, provenance, and that the output trains as a `jsonl:` source."""
import json
from pathlib import Path

import pytest

from qzhou_jax.data.formats import flag_embedding_samples
from qzhou_jax.data.sources import read_jsonl
from qzhou_jax.synthesis import checks, decontam
from qzhou_jax.synthesis.cache import request_key
from qzhou_jax.synthesis.fake_server import Reply, ScriptedServer, original_texts
from qzhou_jax.synthesis.merge import merge
from qzhou_jax.synthesis.run import SynthesisConfig, run

EN = [("what year did the first person walk on the moon", "Neil Armstrong walked on the moon in July 1969. "
       "He was the commander of the Apollo 11 mission."),
      ("how do plants turn sunlight into chemical energy", "Photosynthesis converts light energy into chemical "
       "energy stored in glucose inside the chloroplasts of plant cells."),
      ("which river is the longest in south america", "The Amazon is the longest river in South America and "
       "carries more water than any other river.")]
ZH = [("北京是哪个国家的首都城市", "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。"),
      ("长江流经哪些主要的城市", "长江流经重庆、武汉、南京和上海等多个重要城市，最后注入东海。")]


def write_input(path, pairs, negatives=True):
    with open(path, "w", encoding="utf-8") as f:
        for i, (q, p) in enumerate(pairs):
            row = {"query": q, "pos": [p], "prompt": "Given a question, retrieve its answer"}
            if negatives:
                row["neg"] = [f"an unrelated sentence number {i} about nothing in particular"]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def config(tmp_path, server, generator="paraphrase", name="out", **kw):
    kw.setdefault("input", str(tmp_path / "in.jsonl"))
    return SynthesisConfig(generator=generator, output=str(tmp_path / f"{name}.jsonl"), n=kw.pop("n", 2),
                           model="fake-model", base_url=server.base_url, concurrency=kw.pop("concurrency", 4),
                           backoff_base=0.01, progress_every=60, decontaminate_tasks="none", **kw)


def rows_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def server_keys(server, generator):
    return {request_key(body, generator) for body in server.requests}


@pytest.mark.parametrize("generator", ["paraphrase", "augment", "hard_negatives"])
def test_outputs_pass_checks_carry_provenance_and_train_as_jsonl(tmp_path, generator):
    pairs = EN + ZH
    write_input(tmp_path / "in.jsonl", pairs)
    with ScriptedServer() as server:
        summary = run(config(tmp_path, server, generator, n=3), decontam.Decontaminator())
    rows = rows_of(tmp_path / "out.jsonl")
    assert summary["complete"] and summary["items_done"] == len(pairs) and summary["accepted"] == 3 * len(pairs)
    assert server.max_in_flight <= 4 and summary["max_in_flight"] <= 4
    assert [r["source_index"] for r in rows] == sorted(r["source_index"] for r in rows)
    for row in rows:
        q, p = pairs[row["source_index"]]
        assert row["generator"] == generator and row["model"] == "fake-model" and row["attempt"] >= 1
        assert row["source_id"] == f"in.jsonl:{row['source_index'] + 1}"
        if generator == "paraphrase":
            assert checks.check_paraphrase(row["query"], row["pos"][0], q, p) is None
        elif generator == "augment":
            assert checks.check_augment(row["query"], row["pos"][0], row["neg"][0], q, p) is None
        else:
            generated = row["neg"][1:]
            assert len(generated) == 3 and row["query"] == q and row["pos"] == [p]
            assert all(checks.check_hard_negative(n, q, p) is None for n in generated)
            assert all(not checks.near_duplicate(a, b) for i, a in enumerate(generated) for b in generated[i + 1:])
    # The language of the prompt follows the input's.
    for body in server.requests:
        q, p = original_texts(body)
        zh = checks.language(p) == "zh"
        assert ("只输出一个 JSON" in body["messages"][0]["content"]) == zh
        assert body["response_format"]["type"] == "json_schema"
    # The rows read as FlagEmbedding retrieval samples, extra provenance fields ignored.
    samples = [s for r in read_jsonl(tmp_path / "out.jsonl") for s in flag_embedding_samples(r.fields, r.where)]
    assert len(samples) == len(rows) and samples[0].instruction == "Given a question, retrieve its answer"


def _broken_then_valid(per_item):
    """1st request of an item: malformed JSON; 2nd: one valid rewrite twice, the original, a too-long one; then
    the default model."""
    def script(req, i):
        q, p = original_texts(req)
        k = per_item.setdefault(q, 0)
        per_item[q] = k + 1
        if k == 0:
            return Reply(content='{"rewrites": [{"query": "unterminated')
        if k == 1:
            good = {"query": " ".join(f"x{t}" for t in checks.tokens(q)),
                    "positive": " ".join(f"y{t}" for t in checks.tokens(p))}
            return Reply(payload={"rewrites": [good, dict(good), {"query": q, "positive": p},
                                               {"query": good["query"], "positive": good["positive"] * 2},
                                               {"query": 3}]})
        return None
    return script


def test_each_broken_answer_rejected_with_reason_and_item_retried(tmp_path):
    write_input(tmp_path / "in.jsonl", EN)
    per_item = {}
    with ScriptedServer(_broken_then_valid(per_item)) as server:
        summary = run(config(tmp_path, server, n=2), decontam.Decontaminator())
    assert summary["rejected"] == {"length_ratio": 3, "malformed_json": 3, "near_duplicate": 3, "schema": 3,
                                   "too_similar": 3}
    assert summary["attempts"] == 9 and summary["retried_attempts"] == 6 and summary["requests"] == 9
    assert summary["items_done"] == 3 and len(rows_of(tmp_path / "out.jsonl")) == 6
    assert all(v == 3 for v in per_item.values())


def test_max_attempts_exhausted_counts_short_items(tmp_path):
    write_input(tmp_path / "in.jsonl", EN[:2])
    same = lambda req, i: Reply(payload={"rewrites": [dict(zip(("query", "positive"), original_texts(req)))]})
    with ScriptedServer(same) as server:
        summary = run(config(tmp_path, server, n=2, max_attempts=3), decontam.Decontaminator())
    assert summary["items_short"] == 2 and summary["accepted"] == 0 and summary["rows_written"] == 0
    assert summary["rejected"] == {"too_similar": 6} and len(server.requests) == 6


def test_duplicates_across_items_dropped(tmp_path):
    write_input(tmp_path / "in.jsonl", [EN[0], EN[0], EN[1]])
    rewrite = lambda text: " ".join("z" + t for t in checks.tokens(text))  # the same answer for the same input
    with ScriptedServer(lambda req, i: Reply(payload={"rewrites": [
            {"query": rewrite(original_texts(req)[0]), "positive": rewrite(original_texts(req)[1])}]})) as server:
        summary = run(config(tmp_path, server, n=1), decontam.Decontaminator())
    assert summary["accepted"] == 3 and summary["duplicates_dropped"] == 1
    assert [r["source_index"] for r in rows_of(tmp_path / "out.jsonl")] == [0, 2]


def test_resume_after_stop_equals_uninterrupted_and_pays_nothing_twice(tmp_path):
    write_input(tmp_path / "in.jsonl", EN + ZH)
    with ScriptedServer(_broken_then_valid({})) as server:
        full = run(config(tmp_path, server, name="full"), decontam.Decontaminator())
    expected = (tmp_path / "full.jsonl").read_bytes()
    per_item = {}
    with ScriptedServer(_broken_then_valid(per_item)) as server:
        partial = run(config(tmp_path, server, name="part", max_requests=7), decontam.Decontaminator())
        paid = server_keys(server, "paraphrase")
    assert not partial["complete"] and partial["requests"] == 7 and "BudgetExhausted" in partial["stopped"]
    assert (tmp_path / "part.jsonl").read_bytes() != expected
    with ScriptedServer(_broken_then_valid(per_item)) as server:  # the scripted server remembers, like an LLM would not
        resumed = run(config(tmp_path, server, name="part"), decontam.Decontaminator())
        assert not server_keys(server, "paraphrase") & paid     # nothing asked twice
    assert resumed["complete"] and resumed["cached_responses"] == 7
    assert resumed["requests"] + 7 == full["requests"]
    assert (tmp_path / "part.jsonl").read_bytes() == expected
    # A torn last journal record (kill -9 during the write) is cut off and only that answer is asked again.
    journal = tmp_path / "part.jsonl.journal.jsonl"
    data = journal.read_bytes()
    journal.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] + data.rstrip(b"\n").rsplit(b"\n", 1)[1][:30])
    with ScriptedServer() as server:
        again = run(config(tmp_path, server, name="part"), decontam.Decontaminator())
    assert again["requests"] == 1 and (tmp_path / "part.jsonl").read_bytes() == expected


def test_malformed_journal_line_in_the_middle_is_an_error(tmp_path):
    write_input(tmp_path / "in.jsonl", EN[:1])
    journal = tmp_path / "out.jsonl.journal.jsonl"
    journal.write_text('{"key": "a", "text": "x"}\nnot json\n{"key": "b", "text": "y"}\n')
    with ScriptedServer() as server, pytest.raises(ValueError, match=r"journal.jsonl:2: malformed"):
        run(config(tmp_path, server), decontam.Decontaminator())


def test_shards_merge_to_the_unsharded_output(tmp_path):
    pairs = [EN[0], EN[0]] + EN[1:] + ZH   # rows 0 and 1 land in different shards and collide
    write_input(tmp_path / "in.jsonl", pairs)
    fixed = {"query": "a fixed rewrite of the moon landing question here",
             "positive": " ".join("k" + t for t in checks.tokens(EN[0][1]))}
    script = lambda req, i: Reply(payload={"rewrites": [fixed]}) if original_texts(req)[0] == EN[0][0] else None
    with ScriptedServer(script) as server:
        whole = run(config(tmp_path, server, name="whole"), decontam.Decontaminator())
        shard_summaries = [run(config(tmp_path, server, name=f"s{i}", shard=f"{i}/3"), decontam.Decontaminator())
                           for i in (2, 0, 1)]
    assert sum(s["items"] for s in shard_summaries) == len(pairs)
    merged = merge([str(tmp_path / f"s{i}.jsonl") for i in (1, 2, 0)], str(tmp_path / "merged.jsonl"))
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert whole["duplicates_dropped"] >= 1 and merged["duplicates_dropped"] == whole["duplicates_dropped"]
    for field in ("accepted", "items_done", "rows_written"):
        assert merged[field] == whole[field]
    with pytest.raises(ValueError, match="not exactly"):
        merge([str(tmp_path / "s0.jsonl"), str(tmp_path / "s1.jsonl")], str(tmp_path / "bad.jsonl"))


def test_near_duplicates_across_items_dropped_once_whether_sharded_or_not(tmp_path):
    """Two items get rewrites that differ in one token of each field: near-duplicate rows from different items
    (and, at 3 shards, different shards). The single run drops the later one; shards leave it to the merge, which
    gives the single run's bytes and count."""
    twin = (EN[0][0].replace("person", "woman"), EN[0][1].replace("Neil Armstrong", "Sally Ride"))
    write_input(tmp_path / "in.jsonl", [EN[0], EN[1], twin] + ZH)
    query = "in which year did humans first step onto the moon"
    positive = " ".join("k" + t for t in checks.tokens(EN[0][1]))

    def script(req, i):
        original = original_texts(req)[0]
        if original == EN[0][0]:
            return Reply(payload={"rewrites": [{"query": query, "positive": positive}]})
        if original == twin[0]:
            return Reply(payload={"rewrites": [{"query": query.replace("humans", "people"),
                                                "positive": positive.replace("kneil", "kneal")}]})
        return None
    with ScriptedServer(script) as server:
        whole = run(config(tmp_path, server, name="whole", n=1), decontam.Decontaminator())
        shards = [run(config(tmp_path, server, name=f"s{i}", shard=f"{i}/3", n=1), decontam.Decontaminator())
                  for i in range(3)]
    assert whole["complete"] and whole["near_duplicates_dropped"] == 1 and whole["duplicates_dropped"] == 0
    assert [r["source_index"] for r in rows_of(tmp_path / "whole.jsonl")] == [0, 1, 3, 4]
    assert all(s["near_duplicates_dropped"] is None for s in shards)  # left to the merge
    merged = merge([str(tmp_path / f"s{i}.jsonl") for i in range(3)], str(tmp_path / "merged.jsonl"))
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert merged["near_duplicates_dropped"] == 1 and merged["rows_written"] == whole["rows_written"]


def test_decontamination_counted(tmp_path):
    write_input(tmp_path / "in.jsonl", EN)
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(EN[0][0].upper() + "?\n" + "Prefix words here. " + EN[1][1][:-1] + " and more.\n")
    d = decontam.build("none", [str(eval_file)])
    with ScriptedServer() as server:
        summary = run(config(tmp_path, server, "hard_negatives"), d)
    assert summary["decontaminated"] == {"exact": 1, "ngram": 1}
    assert [r["source_index"] for r in rows_of(tmp_path / "out.jsonl")] == [2]


def test_decontamination_against_local_eval_tasks(tmp_path):
    from qzhou_jax.data import shared_data

    test_pairs = shared_data.read_sts("stsb", "test")
    d = decontam.from_eval_tasks("STSBenchmark")
    long_test = next(s.text_a for s in test_pairs if len(checks.tokens(s.text_a)) >= 16)
    assert d.match(test_pairs[0].text_a.lower()) == "exact"
    assert d.match("so, " + long_test + " indeed") == "ngram"
    assert d.match("a sentence that appears in no evaluation set at all, by construction qqq") is None
    rows = [{"query": test_pairs[1].text_b, "pos": ["fine"]}, {"query": "fine query", "pos": ["fine passage"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = decontam.decontaminate_file(tmp_path / "train.jsonl", tmp_path / "clean.jsonl", d)
    assert out["kept"] == 1 and out["decontaminated"] == {"exact": 1}
    assert rows_of(tmp_path / "clean.jsonl") == rows[1:]


def test_api_key_sent_but_never_written(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_KEY", secret)
    write_input(tmp_path / "in.jsonl", EN)
    with ScriptedServer() as server:
        run(config(tmp_path, server, api_key_env="MY_KEY"), decontam.Decontaminator())
    assert all(h.get("authorization") == f"Bearer {secret}" for h in server.headers)
    written = [p for p in tmp_path.iterdir() if p.is_file()]
    assert len(written) >= 3 and not any(secret.encode() in p.read_bytes() for p in written)


def test_bad_input_names_file_line_and_field(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n"
                                       + json.dumps({"pos": ["p"]}) + "\n")
    with ScriptedServer() as server:
        with pytest.raises(ValueError, match=r"in.jsonl:2: field 'query' is missing"):
            run(config(tmp_path, server), decontam.Decontaminator())
        with pytest.raises(ValueError, match=r"--shard must be I/N"):
            run(config(tmp_path, server, shard="1of2"), decontam.Decontaminator())
        with pytest.raises(ValueError, match=r"need 0 <= I < N"):
            run(config(tmp_path, server, shard="2/2"), decontam.Decontaminator())
    assert not server.requests
