"""Config -> per-host Grain pipeline of homogeneous batches, plus a description of the mixture.

    dataset, info = build_pipeline(config.data, tokenizer, process_index=0, process_count=1, seed=0)
    it = iter(dataset)            # grain DatasetIterator; it.get_state() / it.set_state(state) resume exactly
    batch = next(it)              # numpy dict in the layout of tokenize.py, one dataset per batch

Loading reads every dataset into memory as samples (`load_datasets`), or opens a prepared one lazily
(`prepared:` sources). Sizes n_i, which set the sampling probabilities, count the dataset's own samples: one per
(query, positive) pair, one per scored pair -- not the (b, a) copies that both_directions adds to the stream. With `tokenizer=None` the pipeline
yields text batches (anchor / candidates strings, sample positions) instead of token arrays, for sampling
checks and inspection without a tokenizer.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from qzhou_jax.cli_errors import UsageError
from qzhou_jax.data import adapters, checks, contamination, hub, mixture, packing, prepared, shared_data, sources
from qzhou_jax.data.contamination import EvaluationTexts
from qzhou_jax.data.errors import DataError, SkipCounter
from qzhou_jax.data.formats import CLASSIFICATION, PAIR_SCORE
from qzhou_jax.batch_schema import array
from qzhou_jax.data.spec import DataConfig, DatasetSpec
from qzhou_jax.data.tokenize import Collator, ExampleBuilder, TokenizeSpec, label_vocabulary
from qzhou_jax.data.transforms import LabelIndex, both_directions


def expand_data_dir(path: str) -> str:
    return path.replace("{data_dir}", str(shared_data.data_dir()))


def read_samples(spec: DatasetSpec, counter: SkipCounter) -> list:
    """The samples of one dataset, before max_examples / both_directions; bad rows go through `counter`."""
    def invalid(err: DataError) -> None:
        counter.invalid(spec.name, err)

    if spec.kind == "shared":
        local = SkipCounter(skip_invalid=counter.skip_invalid)
        samples = shared_data.read_shared(spec.location, spec.split, local, spec.max_chars)
        counter.absorb(local, spec.name)
        return samples
    if spec.kind == "beir":
        beir = sources.read_beir_folder(expand_data_dir(spec.location), spec.split, invalid)
        return shared_data.beir_samples(beir, spec.instruction)
    path = expand_data_dir(spec.location)
    if spec.kind == "jsonl":
        rows = sources.read_jsonl(path, invalid)
    elif spec.kind == "parquet":
        rows = sources.read_parquet(path)
    elif spec.kind == "hf_disk":
        rows = sources.read_hf_disk(path, spec.split)
    elif spec.kind == "hub":
        rows = hub.read_rows(spec.location, invalid)
    elif spec.kind == "tfds":
        rows = sources.read_tfds(spec.location, spec.split, spec.data_dir and expand_data_dir(spec.data_dir))
    else:
        raise UsageError(f"{spec.name}: unknown source kind {spec.kind!r}")
    transform = spec.transform or adapters.DEFAULT_TRANSFORM[spec.task]
    adapter, _ = adapters.get_adapter(transform, spec.fields)
    if adapter.task != spec.task:
        raise UsageError(f"{spec.name}: transform {transform!r} makes {adapter.task!r} samples, task is {spec.task!r}")
    options = adapters.AdapterOptions(spec.instruction, spec.max_chars, spec.max_words, spec.label_names)
    return adapters.samples_from_rows(rows, transform, spec.fields, options, invalid)


def _subset_indices(spec: DatasetSpec, n: int, seed: int) -> np.ndarray | None:
    """max_examples: a seeded random subset in file order (files sorted by label or topic would otherwise give a
    one-label slice); depends on (seed, dataset name) only, so hosts agree."""
    if spec.max_examples is None or n <= spec.max_examples:
        return None
    rng = np.random.default_rng([seed, *spec.name.encode()])
    return np.sort(rng.choice(n, size=spec.max_examples, replace=False))


def load_prepared(spec: DatasetSpec, counter: SkipCounter, seed: int = 0, verify: str = prepared.VERIFY_DEFAULT):
    """A prepared dataset as a lazy sequence (max_examples / both_directions as views; no record is read). Its
    shards are checked against the manifest first (`verify`, prepared.VERIFY_LEVELS); the rows `prepare` skipped
    join the report and the max_skipped_fraction rule, as if the data were read here."""
    samples = prepared.PreparedSamples(expand_data_dir(spec.location), verify=verify)
    if samples.task != spec.task:
        raise DataError(spec.source, f"holds {samples.task!r} samples, the config's task is {spec.task!r}")
    manifest = samples.manifest
    counter.add_recorded(spec.name, manifest.get("skipped", {}), manifest.get("skipped_examples", []),
                         int(manifest.get("malformed_rows", 0)))
    if manifest.get("samples_read") is not None:  # manifests before it was recorded: reported, not checked
        checks.check_skipped(spec, int(manifest["samples_read"]), counter)
    if (keep := _subset_indices(spec, len(samples), seed)) is not None:
        if spec.task == CLASSIFICATION:  # drop labels our own subsampling left with one text (counted)
            labels = np.asarray(samples.labels)[keep]
            values, counts = np.unique(labels, return_counts=True)
            for label in values[counts < 2]:
                counter.skip(spec.name, "label left with a single text by max_examples", f"{spec.source} {label!r}")
            keep = keep[~np.isin(labels, values[counts < 2])]
        samples = prepared.Subset(samples, keep)
    if spec.task == PAIR_SCORE and spec.both_directions:
        samples = prepared.BothDirections(samples)
    if not len(samples):
        raise UsageError(f"{spec.name} ({spec.source}): no samples")
    return samples


def load_samples(spec: DatasetSpec, counter: SkipCounter, seed: int = 0,
                 verify: str = prepared.VERIFY_DEFAULT, evaluation_texts: EvaluationTexts | None = None) -> list:
    """read_samples + max_examples + both_directions + dropping single-text classification labels
    (a `prepared:` source: `load_prepared`, lazily, its shards checked as `verify` says). A dataset with
    `decontaminate` needs `evaluation_texts` (task names -> their texts, e.g. eval.tasks.evaluation_texts): the
    data code does not know the evaluation tasks, its callers pass them in."""
    if spec.kind == "prepared":
        return load_prepared(spec, counter, seed, verify)
    samples = read_samples(spec, counter)
    checks.check_read(spec, samples, counter)  # too many bad rows, none left, degenerate data: refused here
    if spec.decontaminate:
        if evaluation_texts is None:
            raise UsageError(f"{spec.name}: decontaminate={spec.decontaminate!r} needs the evaluation texts; "
                             f"the caller passes evaluation_texts (qzhou_jax.eval.tasks.evaluation_texts)")
        samples = contamination.drop_contaminated_samples(samples, spec.decontaminate, evaluation_texts, counter,
                                                          spec.name, spec.source)
    if spec.task == CLASSIFICATION:  # in the file itself a label with one text is bad input
        for label in LabelIndex(samples).singleton_labels():
            counter.invalid(spec.name, DataError(spec.source, f"label {label!r} has a single text, so no positive "
                                                              f"can be drawn for it"))
            samples = [s for s in samples if s.label != label]
    if (keep := _subset_indices(spec, len(samples), seed)) is not None:
        samples = [samples[i] for i in keep]
        if spec.task == CLASSIFICATION:  # ...but after our own subsampling it is expected: counted and dropped
            for label in LabelIndex(samples).singleton_labels():
                counter.skip(spec.name, "label left with a single text by max_examples", f"{spec.source} {label!r}")
                samples = [s for s in samples if s.label != label]
    if spec.task == PAIR_SCORE and spec.both_directions:
        samples = both_directions(samples)
    if not samples:
        raise UsageError(f"{spec.name} ({spec.source}, split {spec.split!r}): no samples")
    return samples


@dataclasses.dataclass
class LoadedDataset:
    spec: DatasetSpec
    samples: Sequence  # what the stream draws from (both_directions copies included)

    @property
    def size(self) -> int:
        """n_i for sampling: the dataset's own samples, without the both_directions copies."""
        if self.spec.task == PAIR_SCORE and self.spec.both_directions:
            return len(self.samples) // 2
        return len(self.samples)


def load_datasets(config, counter: SkipCounter | None = None,
                  evaluation_texts: EvaluationTexts | None = None) -> tuple[list[LoadedDataset], SkipCounter]:
    config = DataConfig.from_config(config)
    counter = counter or SkipCounter.for_data(config)
    return [LoadedDataset(spec, load_samples(spec, counter, config.seed, config.verify, evaluation_texts))
            for spec in config.datasets], counter


@dataclasses.dataclass
class MixtureInfo:
    names: list[str]
    tasks: list[str]
    sizes: list[int]
    probabilities: np.ndarray
    batch_sizes: list[int]  # global, per dataset
    num_candidates: list[int]
    label_vocabularies: list[dict[str, int] | None]
    skipped: SkipCounter
    process_count: int = 1

    def table(self) -> str:
        head = f"{'id':>3}  {'dataset':<20} {'task':<15} {'size':>9} {'p':>7} {'batch':>6} {'C':>3}"
        rows = [head, "-" * len(head)]
        for i, name in enumerate(self.names):
            rows.append(f"{i:>3}  {name:<20} {self.tasks[i]:<15} {self.sizes[i]:>9} {self.probabilities[i]:>7.4f} "
                        f"{self.batch_sizes[i]:>6} {self.num_candidates[i]:>3}")
        return "\n".join(rows)


def mixture_info(config, datasets: Sequence[LoadedDataset] | None = None, counter: SkipCounter | None = None,
                 process_count: int = 1, evaluation_texts: EvaluationTexts | None = None) -> MixtureInfo:
    """Datasets, sizes, sampling probabilities, task types (loads the data unless `datasets` is given)."""
    config = DataConfig.from_config(config)
    if datasets is None:
        datasets, counter = load_datasets(config, counter, evaluation_texts)
    tasks = [d.spec.task for d in datasets]
    sizes = [d.size for d in datasets]
    p = mixture.sampling_probabilities(sizes, tasks, config.alpha, config.eta, [d.spec.weight for d in datasets])
    for task in set(tasks):
        if task not in config.batch_size:
            raise UsageError(f"config.data.batch_size has no entry for task {task!r}")
    return MixtureInfo(
        names=[d.spec.name for d in datasets], tasks=tasks, sizes=sizes, probabilities=p,
        batch_sizes=[int(config.batch_size[t]) for t in tasks],
        num_candidates=[d.spec.num_candidates for d in datasets],
        label_vocabularies=[label_vocabulary(d.samples) if d.spec.task == CLASSIFICATION else None
                            for d in datasets],
        skipped=counter or SkipCounter(), process_count=process_count)


def text_batch(examples: Sequence[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Batch function without a tokenizer: strings stay lists, the schema's small fields become its arrays."""
    return {
        "anchor": [e["anchor"] for e in examples],
        "candidates": [e["candidates"] for e in examples],
        **{name: array(name, [e[name] for e in examples])
           for name in ("cand_valid", "score", "labels", "anchor_hash", "cand_hash")},
        "dataset_id": np.array([e["dataset_id"] for e in examples], dtype=np.int32),
        "position": np.array([e["position"] for e in examples], dtype=np.int64),
        "task": task,
    }


def build_pipeline(data_config, tokenizer=None, *, process_index: int | None = None,
                   process_count: int | None = None, seed: int | None = None,
                   datasets: Sequence[LoadedDataset] | None = None,
                   counter: SkipCounter | None = None, row_chunks: int = 1,
                   evaluation_texts: EvaluationTexts | None = None) -> tuple[grain.IterDataset, MixtureInfo]:
    """(Grain IterDataset of per-host batches, MixtureInfo). Host defaults come from JAX when not given;
    `seed` defaults to config.data.seed; pass `datasets` to reuse already loaded samples. `row_chunks`: with
    data.packing, packed rows come in a multiple of this (the trainer passes its GradCache chunks)."""
    config = DataConfig.from_config(data_config)
    if process_index is None or process_count is None:
        import jax  # only for the defaults: the data code itself runs without JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    seed = config.seed if seed is None else int(seed)
    if datasets is None:
        datasets, counter = load_datasets(config, counter, evaluation_texts)
    info = mixture_info(config, datasets, counter, process_count)

    streams = []
    for i, d in enumerate(datasets):
        spec = TokenizeSpec(
            dataset_id=i, task=d.spec.task, num_candidates=d.spec.num_candidates,
            max_len_query=d.spec.max_len_query, max_len_passage=d.spec.max_len_passage,
            symmetric=d.spec.prompts_candidates, instruction=d.spec.instruction, prompt_sep=config.prompt_sep,
            label_ids=info.label_vocabularies[i])
        batch_fn = (functools.partial(text_batch, task=spec.task) if tokenizer is None
                    else Collator(tokenizer, spec, config.buckets))
        if config.packing and tokenizer is not None:  # data/packing.py: packed rows with segment ids
            batch_fn = packing.packed_collator(batch_fn, config.packing, row_chunks)
        streams.append(mixture.dataset_stream(
            len(d.samples), ExampleBuilder(d.samples, spec), seed=mixture.derive_seed(seed, i),
            host_batch=mixture.host_batch_size(info.batch_sizes[i], process_count),
            process_index=process_index, process_count=process_count, batch_fn=batch_fn))
    mixed = mixture.step_mixture(streams, info.probabilities, seed)
    read_options = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_buffer_size)
    return mixed.to_iter_dataset(read_options), info
