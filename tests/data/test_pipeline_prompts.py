"""Prompts at batch level, on the shared data with the real Qwen2.5 tokenizer: decoding the token ids the trainer
receives shows each anchor prompted with its dataset's instruction, retrieval candidates plain and the candidates
of symmetric tasks (pair score, classification) prompted too, with `prompt_sep` between "Query:" and the text."""
import pytest

from qzhou_jax.data import presets
from qzhou_jax.data.pipeline import build_pipeline
from qzhou_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def data_config(prompt_sep):
    return dict(
        datasets=(presets.retrieval(max_len_query=64, max_len_passage=96, num_negatives=2, max_examples=24,
                                    chinese=False)[:1]
                  + presets.pair_score(max_len=64, max_examples=24, chinese=False)[:1]
                  + presets.classification(max_len=64, num_negatives=2, max_examples=24)[:1]),
        alpha=0.5, seed=0, batch_size=dict(retrieval=4, pair_score=4, classification=4), buckets=(32, 64, 96),
        prompt_sep=prompt_sep, num_threads=1)


def decoded(tokenizer, ids, mask):
    return tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


@pytest.mark.parametrize("prompt_sep", [" ", ""])
def test_anchors_prompted_retrieval_candidates_plain_symmetric_candidates_prompted(tokenizer, prompt_sep):
    dataset, info = build_pipeline(data_config(prompt_sep), tokenizer, process_index=0, process_count=1)
    instructions = {d["name"]: d["instruction"] for d in data_config(prompt_sep)["datasets"]}
    seen = set()
    for batch in dataset:
        dataset_id = int(batch["dataset_id"][0])
        name, task = info.names[dataset_id], info.tasks[dataset_id]
        prefix = f"Instruct: {instructions[name]}\nQuery:{prompt_sep}"
        for i in range(batch["anchor_ids"].shape[0]):
            anchor = decoded(tokenizer, batch["anchor_ids"][i], batch["anchor_mask"][i])
            assert anchor.startswith(prefix) and anchor[len(prefix):][:1].strip(), (name, anchor)
            for j in range(batch["cand_ids"].shape[1]):
                if not batch["cand_valid"][i, j]:
                    continue
                candidate = decoded(tokenizer, batch["cand_ids"][i, j], batch["cand_mask"][i, j])
                if task == "retrieval":
                    assert "Instruct:" not in candidate and candidate.strip(), (name, candidate)
                else:
                    assert candidate.startswith(prefix), (name, task, candidate)
        seen.add(task)
        if len(seen) == 3:
            break
    assert seen == {"retrieval", "pair_score", "classification"}
