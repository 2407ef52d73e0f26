"""Near-duplicate rows across an output: the LSH result equals a brute-force pass over every earlier kept row
(the definition), first occurrence wins, both fields must be near-equal, and non-transitive chains resolve as
in one sequential pass."""
import numpy as np

from qzhou_jax.synthesis import checks, near_dups

VOCAB = [f"w{i}" for i in range(400)] + ["的", "是", "城", "市", "河", "流"]


def brute_force(rows):
    """The definition, O(n^2): drop a row near-equal (query and positive) to any earlier kept row."""
    kept = []
    for row in rows:
        if not any(checks.near_duplicate(k["query"], row["query"]) and
                   checks.near_duplicate(k["pos"][0], row["pos"][0]) for k in kept):
            kept.append(row)
    return kept


def edited(rng, tokens, share):
    """`tokens` with round(share * len) tokens substituted (an edit ratio of about `share`)."""
    tokens = list(tokens)
    for i in rng.choice(len(tokens), size=int(round(share * len(tokens))), replace=False):
        tokens[i] = "x" + tokens[i]
    return tokens


def make_rows(seed=0, n_base=120):
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_base):
        q = list(rng.choice(VOCAB, size=int(rng.integers(8, 25))))
        p = list(rng.choice(VOCAB, size=int(rng.integers(20, 120))))
        rows.append({"query": " ".join(q), "pos": [" ".join(p)], "id": f"base{b}"})
        for v in range(int(rng.integers(0, 4))):
            kind = rng.integers(0, 4)
            if kind == 0:    # near-duplicate of both fields: dropped
                q2, p2 = edited(rng, q, 0.05), edited(rng, p, 0.08)
            elif kind == 1:  # same positive, another query: kept (a passage may answer several questions)
                q2, p2 = list(rng.choice(VOCAB, size=len(q))), p
            elif kind == 2:  # same query, another positive: kept
                q2, p2 = q, list(rng.choice(VOCAB, size=len(p)))
            else:            # just past the limit on the query (edit ratio 0.2 > 0.1): kept
                q2, p2 = edited(rng, q, 0.2), p
            rows.append({"query": " ".join(q2), "pos": [" ".join(p2)], "id": f"base{b}.{v}.{kind}"})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def test_lsh_result_equals_the_brute_force_definition():
    rows = make_rows()
    kept, dropped = near_dups.drop_near_duplicates(rows)
    expected = brute_force(rows)
    assert [r["id"] for r in kept] == [r["id"] for r in expected]
    assert dropped == len(rows) - len(expected) and dropped >= 20  # the planted near-duplicates were there
    kept_ids = {r["id"] for r in kept}
    dropped_ids = [r["id"] for r in rows if r["id"] not in kept_ids]
    # only near-duplicates of both fields go: a kind-0 variant, or a base row whose kind-0 variant came first
    assert all(i.endswith(".0") or "." not in i for i in dropped_ids), dropped_ids


def test_first_occurrence_wins_and_both_fields_must_be_near_equal():
    base = {"query": "what year did the first person walk on the moon in the apollo program",
            "pos": ["Neil Armstrong walked on the moon in July 1969 as commander of the Apollo 11 mission"]}
    near = {"query": base["query"].replace("person", "human"), "pos": [base["pos"][0].replace("July", "june")]}
    other_pos = {"query": base["query"], "pos": ["Photosynthesis converts light into chemical energy in plants"]}
    assert checks.near_duplicate(base["query"], near["query"]) and not checks.normalise(base["query"]) == \
        checks.normalise(near["query"])
    kept, dropped = near_dups.drop_near_duplicates([near, base, other_pos])
    assert kept == [near, other_pos] and dropped == 1


def test_a_chain_of_near_duplicates_resolves_against_kept_rows_only():
    """a~b and b~c but not a~c: b is dropped as a's near-duplicate, so c (compared with kept rows a only) stays."""
    words = [f"t{i}" for i in range(20)]
    a = words
    b = words[:18] + ["u18", "t19"]              # 1 of 20 edited
    c = words[:17] + ["u17", "u18", "v19"]       # 2 from b, 3 from a: edit ratio 0.15 > 0.1
    pos = ["the same long positive passage " + " ".join(words)]
    rows = [{"query": " ".join(x), "pos": pos} for x in (a, b, c)]
    assert checks.near_duplicate(rows[0]["query"], rows[1]["query"]) and checks.near_duplicate(
        rows[1]["query"], rows[2]["query"]) and not checks.near_duplicate(rows[0]["query"], rows[2]["query"])
    kept, dropped = near_dups.drop_near_duplicates(rows)
    assert kept == [rows[0], rows[2]] and dropped == 1


def test_no_rows_and_unrelated_rows():
    assert near_dups.drop_near_duplicates([]) == ([], 0)
    rows = [{"query": f"question number {i} about {w}", "pos": [f"an answer {w} {i} " * 3]}
            for i, w in enumerate(VOCAB[:50])]
    assert near_dups.drop_near_duplicates(rows) == (rows, 0)
