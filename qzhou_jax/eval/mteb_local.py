"""Score models with the real `mteb` package (its task objects and evaluators) on the local tasks it has.

    python -m qzhou_jax.eval.mteb_local --model st:all-MiniLM-L6-v2 --compare DIR --tasks all --output out.json

mteb 2.26 has 8 of our 12 local tasks (MTEB_TASKS); it has no Banking77Clustering, TRECClassification,
SST2Classification or TrecQA reranking task. Each run takes mteb's own task object (metadata, main score,
evaluator, classification settings) and injects the very data our evaluate scores (eval/tasks.py, including its
deterministic --max-examples subset), never the hub: nothing is downloaded, and no mteb result cache is read or
written (cache=None: its keys name the hub dataset's revision, not the local data injected here).
--model / --compare take evaluate's forms. Our models go through eval/mteb_adapter.MTEBEncoder (QZhou's instruction
rules); st: models through mteb's own SentenceTransformerEncoderWrapper on plain texts (their built-in prompts
dropped, as evaluate does), or with --st-instructions through MTEBEncoder with our instructions as prompts.

Where mteb's scores differ from our evaluate's, by design:
  * Ocnli: mteb's main score is max_accuracy (best threshold accuracy over its similarity functions); ours is
    cosine_ap, which is among mteb's metrics too. Its split is our dev split (mteb calls it validation).
  * Waimai: mteb fits its classifier on 32 texts per label (Waimai.samples_per_label), our evaluate on 8.
  * Retrieval scores are rounded by mteb to 5 decimals; STS and classification agree with ours exactly when the
    embeddings do. st: models through mteb's wrapper are encoded in other batches than through our STEncoder,
    which can move the last float bits of an embedding.
  * The data is ours, not the hub's C-MTEB/MTEB copies: Ocnli is entailment vs the rest (neutral and contradiction)
    on the local dev file, Waimai the fixed seeded split of eval/tasks.py.
The JSON rows and the table are evaluate's (write_json, results_table); the table names mteb's main metric.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Sequence

from qzhou_jax.cli_errors import UsageError  # a bad --tasks value (task_names), a missing model: one line, exit 2
from qzhou_jax.eval import evaluate as ev
from qzhou_jax.eval import tasks as qt
from qzhou_jax.eval.st_encoder import ST_PREFIX

log = logging.getLogger(__name__)

# Our task name -> mteb 2.26's. The original (v1) tasks, not the ".v2" rewrites: our local files are the
# original data.
MTEB_TASKS = {
    "STSBenchmark": "STSBenchmark", "SICK-R": "SICK-R", "ATEC": "ATEC", "LCQMC": "LCQMC", "Ocnli": "Ocnli",
    "SciFact": "SciFact", "Banking77Classification": "Banking77Classification", "Waimai": "Waimai",
}
_MTEB_SPLIT_NAMES = {"dev": "validation"}
_SUPERSEDED = r".*is superseded by"  # mteb warns (log and warning) per v1 task; the choice is deliberate, see above


class DropSuperseded(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is superseded by" not in record.getMessage()


def task_names(names: str | Sequence[str]) -> list[str]:
    """"all" (every local task mteb has, in MTEB_TASKS order), a comma list or a sequence -> our task names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if names == ["all"]:
        return list(MTEB_TASKS)
    if not names:
        raise UsageError("no tasks given")
    for name in names:
        if name not in MTEB_TASKS:
            why = "mteb has no such task" if name in qt.TASKS else "not a local task"
            raise UsageError(f"{name}: {why}; local tasks mteb has: {', '.join(MTEB_TASKS)}")
    if len(set(names)) < len(names):
        raise UsageError(f"tasks listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return names


# ================================================================================================= tasks
def mteb_task(name: str, max_examples: int = 0):
    """mteb's task object for our task `name`, holding the data our evaluate scores on its evaluation split."""
    import datasets
    import mteb

    ours = qt.get_task(name)
    split = ours.eval_split
    probe = mteb.get_task(MTEB_TASKS[name])
    mteb_split = _MTEB_SPLIT_NAMES.get(split, split)
    if mteb_split not in probe.metadata.eval_splits:
        mteb_split = split
    task = mteb.get_task(MTEB_TASKS[name], eval_splits=[mteb_split])  # ATEC also lists validation: ours only
    if isinstance(ours, qt.PairTask):
        a, b, gold = ours.examples(split, max_examples)
        label = {"score": [float(g) for g in gold]} if ours.positive is None else {"labels": [int(g) for g in gold]}
        data = datasets.Dataset.from_dict({"sentence1": a, "sentence2": b, **label})
        task.dataset = datasets.DatasetDict({mteb_split: data})
    elif isinstance(ours, qt.RetrievalTask):
        corpus, queries, qrels = ours.examples(split, max_examples)
        task.dataset = {"default": {mteb_split: {
            "corpus": datasets.Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
            "queries": datasets.Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
            "relevant_docs": {q: dict(docs) for q, docs in qrels.items()}, "top_ranked": None}}}
    elif isinstance(ours, qt.ClassificationTask):
        train, test = ours.examples(split, max_examples)
        # Label names -> ints in sorted order (mteb's binary AP wants 0/1; the order keeps sklearn's classes_ order).
        index = {label: i for i, label in enumerate(sorted({s.label for s in train + test}))}
        task.dataset = datasets.DatasetDict({
            part: datasets.Dataset.from_dict({"text": [s.text for s in samples],
                                              "label": [index[s.label] for s in samples]})
            for part, samples in ((task.train_split, train), (mteb_split, test))})
    else:
        raise TypeError(f"{name}: no mteb conversion for {type(ours).__name__}")
    task.data_loaded = True  # load_data would fetch the hub copy
    return task


# ================================================================================================ models
def load_model(spec: str, *, st_instructions: bool = False, max_length: int = 512, batch_size: int = 32,
               dtype: str = "float32", step: int | None = None, seed: int = 0):
    """A model mteb.evaluate accepts: mteb's SentenceTransformerEncoderWrapper for plain st: models, else our
    MTEBEncoder over evaluate.load_encoder's encoder."""
    from qzhou_jax.eval.mteb_adapter import MTEBEncoder

    if spec.startswith(ST_PREFIX) and not st_instructions:
        from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

        from qzhou_jax.eval.st_encoder import load_sentence_transformer

        if step is not None:
            raise ValueError(f"{spec}: --step applies to training workdirs only")
        model = load_sentence_transformer(spec, max_length=max_length)
        model.prompts, model.default_prompt_name = {}, None  # plain texts: what our STEncoder embeds
        return SentenceTransformerEncoderWrapper(model)
    encoder = ev.load_encoder(spec, dtype=dtype, max_length=max_length, batch_size=batch_size, step=step, seed=seed,
                              st_instructions=st_instructions)
    revision = getattr(encoder, "revision", None)  # STEncoder: its weights' hash; Encoder: fingerprinted from params
    return MTEBEncoder(encoder, revision=revision if isinstance(revision, str) else None)


# ============================================================================================ evaluation
def evaluate(model: Any, tasks: str | Sequence[str] = "all", *, max_examples: int = 0, model_name: str = "model",
             batch_size: int = 32) -> list[dict]:
    """mteb.evaluate on each task -> evaluate's rows [{model, task, split, metric, value}], main_score first.

    `split` is ours (Ocnli: dev); metrics are mteb's scalar ones in mteb's order (non-finite -> None).
    """
    import mteb

    rows = []
    for name in task_names(tasks):
        task = mteb_task(name, max_examples)
        start = time.time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SUPERSEDED)
            result = mteb.evaluate(model, task, cache=None, show_progress_bar=False,
                                   encode_kwargs={"batch_size": batch_size, "show_progress_bar": False})
        if result.exceptions:
            raise RuntimeError(f"mteb failed on {name}: {result.exceptions[0]}")
        (task_result,) = result.task_results
        (scores,) = task_result.scores[task.eval_splits[0]]  # one split, one (default) subset
        log.info("%s %s: %s %.4f (%.1fs)", model_name, name, task.metadata.main_score, scores["main_score"],
                 time.time() - start)
        split = qt.get_task(name).eval_split
        metrics = {"main_score": scores["main_score"], **scores}
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # hf_subset, languages, per-experiment lists
            rows.append(dict(model=model_name, task=name, split=split, metric=metric,
                             value=float(value) if math.isfinite(value) else None))
    return rows


def main_metrics(names: Sequence[str]) -> dict[str, str]:
    """Each task's mteb main metric, for the table."""
    import mteb

    return {name: mteb.get_task(MTEB_TASKS[name]).metadata.main_score for name in names}


if __name__ == "__main__":  # `python -m qzhou_jax.eval.mteb_local`: the command is qzhou_jax/cli/mteb_local.py
    from qzhou_jax.cli.mteb_local import main

    main()
