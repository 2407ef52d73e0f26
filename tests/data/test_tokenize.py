import concurrent.futures

import numpy as np
import pytest

from qzhou_jax.data.formats import ClassificationSample, PairScoreSample, RetrievalSample
from qzhou_jax.data.tokenize import BATCH_KEYS, Collator, ExampleBuilder, TokenizeSpec, label_vocabulary

PROMPT = "Instruct: find\nQuery: "


def spec(task, c, **kw):
    return TokenizeSpec(dataset_id=kw.pop("dataset_id", 3), task=task, num_candidates=c,
                        max_len_query=kw.pop("max_len_query", 6), max_len_passage=kw.pop("max_len_passage", 5),
                        symmetric=kw.pop("symmetric", task != "retrieval"), instruction=kw.pop("instruction", "find"), **kw)


def test_retrieval_example_pads_and_samples_negatives():
    samples = [RetrievalSample("the cat", "a dog", ("n1",)), RetrievalSample("q", "p", tuple(f"n{i}" for i in range(6)))]
    build = ExampleBuilder(samples, spec("retrieval", 4))
    e = build(0, np.random.default_rng(0))
    assert e["anchor"] == PROMPT + "the cat"
    assert e["candidates"] == ("a dog", "n1", "", "") and e["cand_valid"] == (True, True, False, False)
    assert e["labels"] == (-1,) * 5 and e["score"] == 0.0 and e["dataset_id"] == 3 and e["position"] == 0
    e1 = build(1, np.random.default_rng(5))
    assert e1["candidates"][0] == "p" and all(e1["cand_valid"])
    negs = e1["candidates"][1:]
    assert len(set(negs)) == 3 and set(negs) <= set(samples[1].negatives)
    assert build(1, np.random.default_rng(5)) == e1  # seeded
    draws = {build(1, np.random.default_rng(s))["candidates"][1:] for s in range(20)}
    assert len(draws) > 1


def test_own_instruction_wins_and_empty_means_no_prompt():
    samples = [RetrievalSample("q", "p", (), "mine")]
    assert ExampleBuilder(samples, spec("retrieval", 1))(0, np.random.default_rng(0))["anchor"] == \
        "Instruct: mine\nQuery: q"
    plain = TokenizeSpec(0, "retrieval", 1, 4, 4, symmetric=False, instruction="")
    assert ExampleBuilder([RetrievalSample("q", "p")], plain)(0, np.random.default_rng(0))["anchor"] == "q"


def test_pair_score_symmetric_prompts_both_sides():
    s = [PairScoreSample("one two", "three", 3.5)]
    e = ExampleBuilder(s, spec("pair_score", 1))(0, np.random.default_rng(0))
    assert e["anchor"] == PROMPT + "one two" and e["candidates"] == (PROMPT + "three",) and e["score"] == 3.5
    e = ExampleBuilder(s, spec("pair_score", 1, symmetric=False))(0, np.random.default_rng(0))
    assert e["candidates"] == ("three",)
    with pytest.raises(ValueError):
        spec("pair_score", 2)


def test_classification_example_labels():
    samples = [ClassificationSample(f"t{i}", label) for i, label in enumerate("aabbbc")]
    vocab = label_vocabulary(samples)
    assert vocab == {"a": 0, "b": 1, "c": 2}
    with pytest.raises(ValueError, match=r"single text.*\['c'\]"):
        ExampleBuilder(samples, spec("classification", 3, label_ids=vocab))
    samples = samples[:5]
    e = ExampleBuilder(samples, spec("classification", 3, label_ids=vocab))(0, np.random.default_rng(1))
    assert e["anchor"] == PROMPT + "t0" and e["candidates"][0] == PROMPT + "t1"
    assert {c[len(PROMPT):] for c in e["candidates"][1:]} <= {"t2", "t3", "t4"}
    assert e["labels"] == (0, 0, 1, 1) and e["cand_valid"] == (True,) * 3


def reference_encode(tokenizer, texts, max_len, buckets):
    """Independent reference: whitespace words -> vocab ids, truncate, right-pad to the smallest fitting bucket."""
    vocab = tokenizer.get_vocab()
    rows = [[vocab.get(w, vocab["[UNK]"]) for w in t.split()][:max_len] for t in texts]
    sizes = sorted({b for b in buckets if b < max_len} | {max_len})
    length = next(b for b in sizes if b >= max(1, max(len(r) for r in rows)))
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def test_collator_layout_matches_reference(tokenizer):
    samples = [RetrievalSample("the cat sat", "a dog sat on the mat big red", ("fish swim",)),
               RetrievalSample("who is the bird", "bird flew", ("sea", "sky", "blue"))]
    s = spec("retrieval", 3, max_len_query=7, max_len_passage=6)
    build = ExampleBuilder(samples, s)
    examples = [build(i, np.random.default_rng(i)) for i in range(2)]
    batch = Collator(tokenizer, s, buckets=(2, 4, 8, 16))(examples)
    assert set(batch) == set(BATCH_KEYS)
    ids, mask = reference_encode(tokenizer, [e["anchor"] for e in examples], 7, (2, 4, 8, 16))
    np.testing.assert_array_equal(batch["anchor_ids"], ids)
    np.testing.assert_array_equal(batch["anchor_mask"], mask)
    cids, cmask = reference_encode(tokenizer, [t for e in examples for t in e["candidates"]], 6, (2, 4, 8, 16))
    np.testing.assert_array_equal(batch["cand_ids"], cids.reshape(2, 3, -1))
    np.testing.assert_array_equal(batch["cand_mask"], cmask.reshape(2, 3, -1))
    assert batch["anchor_ids"].shape == (2, 7)  # longest query (7 after truncation) -> bucket max_len 7
    assert batch["cand_ids"].shape == (2, 3, 6)
    np.testing.assert_array_equal(batch["cand_valid"], [[True, True, False], [True, True, True]])
    assert batch["cand_mask"][0, 2].sum() == 0
    for key, dtype in [("anchor_ids", np.int32), ("anchor_mask", np.int32), ("cand_ids", np.int32),
                       ("cand_mask", np.int32), ("cand_valid", bool), ("score", np.float32), ("labels", np.int32),
                       ("dataset_id", np.int32)]:
        assert batch[key].dtype == dtype, key
    np.testing.assert_array_equal(batch["labels"], -np.ones((2, 4)))
    np.testing.assert_array_equal(batch["dataset_id"], [3, 3])


def test_collator_small_bucket(tokenizer):
    s = spec("pair_score", 1, max_len_query=64, max_len_passage=64, symmetric=False, instruction="")
    examples = [ExampleBuilder([PairScoreSample("a b c", "d", 1.0)], s)(0, np.random.default_rng(0))]
    batch = Collator(tokenizer, s, buckets=(4, 16, 32))(examples)
    assert batch["anchor_ids"].shape == (1, 4) and batch["cand_ids"].shape == (1, 1, 4)
    assert batch["score"].tolist() == [1.0] and batch["labels"].shape == (1, 2)


def test_collator_is_thread_safe(tokenizer):
    texts = [" ".join(["cat"] * n) for n in range(1, 40)]
    collators = [Collator(tokenizer, spec("retrieval", 1, max_len_query=q, max_len_passage=p), buckets=(8,))
                 for q, p in [(3, 30), (30, 3)]]
    examples = [[{"anchor": t, "candidates": (t,), "cand_valid": (True,), "score": 0.0, "labels": (-1, -1),
                  "dataset_id": 0}] for t in texts]
    serial = [collators[i % 2](e) for i, e in enumerate(examples * 4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ie: collators[ie[0] % 2](ie[1]), enumerate(examples * 4)))
    for a, b in zip(serial, threaded):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_with_the_qwen_tokenizer():
    from qzhou_jax.tokenizer import load_tokenizer

    qwen = load_tokenizer()
    s = spec("pair_score", 1, max_len_query=12, max_len_passage=12)
    texts = [("A man is playing a flute.", "一个男人在吹长笛。"), ("short", "also short")]
    examples = [ExampleBuilder([PairScoreSample(a, b, 2.0) for a, b in texts], s)(i, np.random.default_rng(0))
                for i in range(2)]
    batch = Collator(qwen, s, buckets=(8, 16))(examples)
    for i, e in enumerate(examples):  # reference: HF's own call, truncated by hand
        ref = qwen(e["anchor"], add_special_tokens=False)["input_ids"][:12]
        assert batch["anchor_ids"][i][batch["anchor_mask"][i] == 1].tolist() == ref
        assert batch["anchor_ids"][i][batch["anchor_mask"][i] == 0].tolist() == \
            [qwen.pad_token_id] * (batch["anchor_ids"].shape[1] - len(ref))


def test_batch_hashes_identify_normalised_texts(tokenizer):
    from qzhou_jax.data.transforms import text_hash

    samples = [RetrievalSample("the cat", "a dog", ("sea",)), RetrievalSample("The  CAT", "a dog"),
               RetrievalSample("red sky", "blue sea", ("a dog",))]
    build = ExampleBuilder(samples, spec("retrieval", 2))
    batch = Collator(tokenizer, spec("retrieval", 2), (4, 8))([build(i, np.random.default_rng(i)) for i in range(3)])
    assert batch["anchor_hash"].dtype == np.int32 and batch["cand_hash"].shape == (3, 2)
    # hashed before prompting, after normalisation: rows 0 and 1 share the query, all three share "a dog"
    assert batch["anchor_hash"][0] == batch["anchor_hash"][1] == text_hash("the cat") != batch["anchor_hash"][2]
    assert batch["cand_hash"][0, 0] == batch["cand_hash"][1, 0] == batch["cand_hash"][2, 1] == text_hash("a dog")
    assert batch["cand_hash"][0, 1] == text_hash("sea") and not batch["cand_valid"][1, 1]


def test_reading_comprehension_keeps_the_question_at_stage_lengths(shared_dir):
    """cmrc2018 at configs/stage1.py's lengths with the real Qwen2.5 tokenizer: every query fits max_len_query
    and ends with the joiner + its question; the queries that fit are tokenised unchanged."""
    import importlib.util

    from qzhou_jax.data.errors import SkipCounter
    from qzhou_jax.data.pipeline import load_samples
    from qzhou_jax.data.spec import DatasetSpec
    from qzhou_jax.data.transforms import READING_COMPREHENSION_JOINER
    from qzhou_jax.tokenizer import load_tokenizer

    import pathlib
    path = pathlib.Path(__file__).parents[2] / "configs" / "stage1.py"
    mod = importlib.util.spec_from_file_location("stage1", path)
    stage1 = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(stage1)
    entry = next(d for d in stage1.get_config().data.datasets if d["name"] == "cmrc2018")
    ds = DatasetSpec.from_dict(entry, "stage1")
    samples = load_samples(ds, SkipCounter())
    qwen = load_tokenizer(None)
    tspec = TokenizeSpec(0, "retrieval", ds.num_candidates, ds.max_len_query, ds.max_len_passage, symmetric=False,
                         instruction=ds.instruction)
    build, collate = ExampleBuilder(samples, tspec), Collator(qwen, tspec, (64, 128, 256))
    examples = [build(i, np.random.default_rng(i)) for i in range(len(samples))]
    batch = collate(examples)
    full = [len(qwen(e["anchor"], add_special_tokens=False)["input_ids"]) for e in examples]
    assert np.mean(np.array(full) > ds.max_len_query) > 0.5  # most queries really are too long
    for e, ids, mask, n in zip(examples, batch["anchor_ids"], batch["anchor_mask"], full):
        kept = ids[mask.astype(bool)]
        question = e["anchor"].rsplit(READING_COMPREHENSION_JOINER, 1)[1]
        assert len(kept) == min(n, ds.max_len_query)
        text = qwen.decode(kept)
        assert text.endswith(READING_COMPREHENSION_JOINER + question), text[-80:]
        if n <= ds.max_len_query:
            assert kept.tolist() == qwen(e["anchor"], add_special_tokens=False)["input_ids"]
        else:
            assert text.startswith("Instruct: ")  # the prompt stays; the context is what was cut
