import collections

import grain
import numpy as np
import pytest

from qzhou_jax.data import mixture

SIZES = [1000, 3000, 8000, 20000]
TASKS = ["retrieval", "pair_score", "retrieval", "classification"]
STEPS = 20_000


def reference_probabilities(sizes, tasks, alpha, eta=None):
    """Written out term by term from docs/recipe.md section 5."""
    mass = [n ** alpha for n in sizes]
    if eta is None:
        return [m / sum(mass) for m in mass]
    s_ret = sum(m for m, t in zip(mass, tasks) if t == "retrieval")
    s_other = sum(m for m, t in zip(mass, tasks) if t != "retrieval")
    return [eta * m / s_ret if t == "retrieval" else (1 - eta) * m / s_other for m, t in zip(mass, tasks)]


@pytest.mark.parametrize("alpha, eta", [(0.5, None), (1.0, None), (0.0, None), (0.5, 0.72), (0.3, 0.5)])
def test_probabilities_match_the_recipe(alpha, eta):
    p = mixture.sampling_probabilities(SIZES, TASKS, alpha, eta)
    np.testing.assert_allclose(p, reference_probabilities(SIZES, TASKS, alpha, eta), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0)
    if eta is not None:
        assert p[[0, 2]].sum() == pytest.approx(eta)


def test_probability_weights_and_errors():
    p = mixture.sampling_probabilities([100, 100], ["retrieval"] * 2, 0.5, weights=[3.0, 1.0])
    np.testing.assert_allclose(p, [0.75, 0.25])
    with pytest.raises(ValueError, match="must contain both"):
        mixture.sampling_probabilities([10, 20], ["retrieval"] * 2, 0.5, eta=0.7)
    with pytest.raises(ValueError, match="at least one sample"):
        mixture.sampling_probabilities([10, 0], ["retrieval"] * 2, 0.5)
    with pytest.raises(Exception, match="unknown task type"):
        mixture.sampling_probabilities([10], ["ranking"], 0.5)
    with pytest.raises(ValueError, match="not divisible"):
        mixture.host_batch_size(10, 4)


def build(probabilities, *, seed=0, process_index=0, process_count=1, batch=2, sizes=SIZES):
    streams = [
        mixture.dataset_stream(n, lambda pos, rng, d=d: {"d": d, "pos": pos}, seed=mixture.derive_seed(seed, d),
                               host_batch=batch, process_index=process_index, process_count=process_count)
        for d, n in enumerate(sizes)]
    return mixture.step_mixture(streams, probabilities, seed)


def take(dataset, n, state=None):
    it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)))
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)], it


@pytest.mark.parametrize("eta", [None, 0.72])
def test_20k_batches_follow_the_target_frequencies(eta):
    p = mixture.sampling_probabilities(SIZES, TASKS, 0.5, eta)
    batches, _ = take(build(p, seed=1), STEPS)
    for b in batches:
        assert (b["d"] == b["d"][0]).all()  # homogeneous: one dataset per batch
    chosen = np.array([b["d"][0] for b in batches])
    freq = np.bincount(chosen, minlength=len(SIZES)) / STEPS
    np.testing.assert_allclose(freq, p, atol=0.01)
    # Each dataset's batches walk its epoch: the first min(n, drawn) positions are all distinct.
    for d, n in enumerate(SIZES):
        positions = np.concatenate([b["pos"] for b in batches if b["d"][0] == d])
        first = positions[: min(n, len(positions))]
        assert len(np.unique(first)) == len(first) and first.max() < n


def test_choice_is_a_function_of_seed_and_step_only():
    p = mixture.sampling_probabilities(SIZES, TASKS, 0.5)
    a, b = mixture.StepSelection(p, seed=5), mixture.StepSelection(p, seed=5)
    late = [b[s] for s in (4321, 99, 3000)]  # random access in another order
    early = [a[s] for s in range(5000)]
    assert late == [early[4321], early[99], early[3000]]
    assert [c for c, _ in early] != [mixture.StepSelection(p, seed=6)[s][0] for s in range(5000)]
    # the within-dataset index counts earlier choices of the same dataset
    counts = collections.Counter()
    for d, k in early:
        assert k == counts[d]
        counts[d] += 1


def test_two_hosts_disjoint_complete_and_in_step():
    sizes, batch = [48, 96], 4  # per host; global batch 8
    p = mixture.sampling_probabilities(sizes, ["retrieval", "retrieval"], 0.5)
    hosts = [take(build(p, seed=2, process_index=h, process_count=2, batch=batch, sizes=sizes), 120)[0]
             for h in (0, 1)]
    seen = collections.defaultdict(list)
    for b0, b1 in zip(*hosts):
        assert b0["d"][0] == b1["d"][0]  # both hosts picked the same dataset
        assert not set(b0["pos"]) & set(b1["pos"])  # disjoint slices
        seen[int(b0["d"][0])].append(np.concatenate([b0["pos"], b1["pos"]]))
    for d, n in enumerate(sizes):
        epoch = np.concatenate(seen[d])[:n]
        assert sorted(epoch) == list(range(n))  # the two slices together cover one epoch exactly


def test_single_host_equals_union_of_two_hosts():
    """Host slices are the single-host global window split across hosts."""
    sizes = [64]
    single, _ = take(build([1.0], seed=3, batch=8, sizes=sizes), 10)
    halves = [take(build([1.0], seed=3, process_index=h, process_count=2, batch=4, sizes=sizes), 10)[0]
              for h in (0, 1)]
    for s, h0, h1 in zip(single, *halves):
        assert sorted(s["pos"]) == sorted(np.concatenate([h0["pos"], h1["pos"]]))


def test_epochs_are_reshuffled():
    batches, _ = take(build([1.0], seed=4, batch=10, sizes=[50]), 10)
    pos = np.concatenate([b["pos"] for b in batches])
    assert sorted(pos[:50]) == sorted(pos[50:]) == list(range(50))
    assert list(pos[:50]) != list(pos[50:])


def test_resume_from_grain_state():
    p = mixture.sampling_probabilities(SIZES, TASKS, 0.5, 0.72)
    first, it = take(build(p, seed=9), 37)
    state = it.get_state()
    expected = [next(it) for _ in range(25)]
    resumed, _ = take(build(p, seed=9), 25, state=state)
    for x, y in zip(expected, resumed):
        assert x["d"][0] == y["d"][0] and np.array_equal(x["pos"], y["pos"])


def test_bad_probabilities():
    with pytest.raises(ValueError, match="summing to 1"):
        build([0.5, 0.2, 0.2, 0.2])


@pytest.mark.parametrize("process_count", [1, 2])
def test_no_sample_twice_in_a_global_batch_across_epochs(process_count):
    """n = 50 with global batch 8: 6 whole batches per epoch, the 2 leftover positions dropped per epoch."""
    n, global_batch = 50, 8
    hosts = [take(build([1.0], seed=7, process_index=h, process_count=process_count,
                        batch=global_batch // process_count, sizes=[n]), 60)[0] for h in range(process_count)]
    batches = [np.concatenate([h[j]["pos"] for h in hosts]) for j in range(60)]
    for b in batches:
        assert len(set(b.tolist())) == global_batch  # no repeat inside a global batch
    for e in range(10):  # each epoch: 6 disjoint batches, 48 distinct positions
        epoch = np.concatenate(batches[6 * e: 6 * e + 6])
        assert len(set(epoch.tolist())) == 48
    assert len({tuple(sorted(np.concatenate(batches[6 * e: 6 * e + 6]).tolist())) for e in range(10)}) > 1


def test_dataset_smaller_than_a_global_batch_is_refused():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        build([1.0], batch=8, sizes=[5])
