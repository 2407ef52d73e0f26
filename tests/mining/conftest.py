"""Shared fixtures for the mining tests: a tiny random Qwen2 model on disk and a few hundred passages."""
import json

import numpy as np
import pytest

from tests import oracle

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega river stone cloud fire light shadow glass iron").split()
INSTRUCTION = "Given a query, retrieve passages"
NUM_ROWS, NUM_EXTRA = 40, 300


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mine_model")
    oracle.make_hf_model(directory, "gqa", vocab_size=151680, hidden_size=32, intermediate_size=64)
    return str(directory)


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """40 rows (1-2 positives, some with an existing negative, one with its own prompt) and a 300-passage
    corpus file that holds normalised duplicates of some positives (case, spacing, NFKC full-width letters)."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("mine_data")
    rows, extra = [], []
    for i in range(NUM_ROWS):
        row = dict(query=sentence(rng, 5), pos=[sentence(rng, 12) for _ in range(1 + (i % 3 == 0))])
        if i % 4 == 1:
            row["neg"] = [sentence(rng, 11)]
        if i == 7:
            row["prompt"] = "A different instruction"
        rows.append(row)
        if i % 5 == 0:  # normalised duplicates of the positive
            extra.append("  " + row["pos"][0].upper().replace(" ", "   ") + " ")
            extra.append(row["pos"][0].replace("a", "\uff41"))  # full-width 'a': NFKC folds it back
    extra += [sentence(rng, int(rng.integers(6, 16))) for _ in range(NUM_EXTRA - len(extra))]
    input_path = write_jsonl(root / "in.jsonl", rows)
    corpus_path = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in extra])
    return dict(rows=rows, extra=extra, input=input_path, corpus=corpus_path, root=root)
