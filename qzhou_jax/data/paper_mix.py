"""The training mix the QZhou-Embedding report names, as data: where each set is published, its format, task,
transformation and instruction.

| name            | hub dataset repo (files)                                   | format    | task / transform          |
|-----------------|------------------------------------------------------------|-----------|---------------------------|
| bge_en_icl      | cfli/bge-full-data (data/*, the bge-en-icl training set)   | parquet   | retrieval / FlagEmbedding |
| bge_m3          | Shitao/bge-m3-data (the sets not listed separately below)  | jsonl     | retrieval / FlagEmbedding |
| bge_gemma2      | hanhainebula/bge-multilingual-gemma2-data (**/*.jsonl)     | jsonl     | retrieval / FlagEmbedding |
| e5              | cfli/bge-e5data (data/*, the e5-mistral public data)       | parquet   | retrieval / FlagEmbedding |
| msmarco, nq, hotpotqa, squad, dureader, miracl | Shitao/bge-m3-data (<set>_len-*.jsonl, split by length) | jsonl | retrieval / FlagEmbedding |
| eli5, fever, quora_duplicates | cfli/bge-e5data (files named after the set) | jsonl/parquet | retrieval / FlagEmbedding |

Every file holds FlagEmbedding rows {"query", "pos": [...], "neg": [...], "prompt"?}; FEVER's claim-evidence and
SQuAD's reading comprehension arrive already transformed into that shape by their publishers, and Quora duplicates
is symmetric (both sides prompted). Layouts are those of the dataset cards when this table was written
(Shitao/bge-m3-data: one file per length range, e.g. msmarco_len-0-500.jsonl); a glob that matches nothing makes
`prepare` list the repo's files. The bundles overlap the named sets (bge-full-data contains MS MARCO, NQ, ...):
`bge_m3` and `e5` exclude the sets taken separately; weight or drop the others to taste (`weight`, per entry).

    python -m qzhou_jax.data.prepare --config configs/paper_mix.py --out /data/paper_mix   # needs hub access
    python -m qzhou_jax.train --config configs/stage1.py:paper:/data/paper_mix ...
"""
from __future__ import annotations

_SEPARATE_M3 = ("msmarco", "nq", "hotpotqa", "squad", "dureader", "miracl")  # taken out of the bge_m3 bundle

# name -> (hub source, instruction, symmetric); instructions follow the E5 / BGE convention for each set.
PAPER_MIX = {
    "msmarco": ("Shitao/bge-m3-data:**/msmarco_len-*.jsonl",
                "Given a web search query, retrieve relevant passages that answer the query", False),
    "nq": ("Shitao/bge-m3-data:**/nq_len-*.jsonl",
           "Given a question, retrieve Wikipedia passages that answer the question", False),
    "hotpotqa": ("Shitao/bge-m3-data:**/hotpotqa_len-*.jsonl",
                 "Given a multi-hop question, retrieve documents that can help answer the question", False),
    "squad": ("Shitao/bge-m3-data:**/squad_len-*.jsonl",
              "Retrieve Wikipedia passages that answer the question", False),
    "dureader": ("Shitao/bge-m3-data:**/dureader_len-*.jsonl",
                 "Given a Chinese search query, retrieve web passages that answer the question", False),
    "miracl": ("Shitao/bge-m3-data:**/miracl*_len-*.jsonl",
               "Given a question, retrieve Wikipedia passages that answer the question", False),
    "eli5": ("cfli/bge-e5data:**/*eli5*", "Provided a user question, retrieve the highest voted answers on Reddit "
             "ELI5 forum", False),
    "fever": ("cfli/bge-e5data:**/*fever*", "Given a claim, retrieve documents that support or refute the claim",
              False),
    "quora_duplicates": ("cfli/bge-e5data:**/*quora*",
                         "Given a question, retrieve questions that are semantically equivalent to the given "
                         "question", True),
    "bge_en_icl": ("cfli/bge-full-data:data/*", "Given a query, retrieve relevant passages", False),
    "e5": ("cfli/bge-e5data:data/*!**/*eli5*!**/*fever*!**/*quora*", "Given a query, retrieve relevant passages",
           False),
    "bge_m3": ("Shitao/bge-m3-data:**/*.jsonl" + "".join(f"!**/{n}*_len-*.jsonl" for n in _SEPARATE_M3),
               "Given a query, retrieve relevant passages", False),
    "bge_gemma2": ("hanhainebula/bge-multilingual-gemma2-data:**/*.jsonl",
                   "Given a query, retrieve relevant passages", False),
}


def hub_datasets(max_len_query: int = 256, max_len_passage: int = 1536, num_negatives: int = 4,
                 names=None) -> list[dict]:
    """Dataset entries with `hub:` sources, for `prepare` (a row's own "prompt" wins over the instruction)."""
    out = []
    for name, (source, instruction, symmetric) in PAPER_MIX.items():
        if names is not None and name not in names:
            continue
        out.append(dict(name=name, source=f"hub:{source}", task="retrieval", transform="retrieval",
                        instruction=instruction, symmetric=symmetric, max_len_query=max_len_query,
                        max_len_passage=max_len_passage, num_negatives=num_negatives))
    return out


DEFAULT_PREPARED_DIR = "prepared/paper_mix"  # `prepare --config configs/paper_mix.py --out` folder


def stage_retrieval(arg: str, config_name: str, shared_default):
    """A stage config's retrieval datasets from its argument: "" -> `shared_default()` (the shared public data,
    offline); "paper" or "paper:DIR" -> the paper's mix prepared into DIR [prepared/paper_mix]."""
    kind, _, root = arg.partition(":")
    if kind not in ("", "paper"):
        raise ValueError(f"{config_name}: unknown variant {arg!r}; use '' (shared data) or 'paper[:DIR]'")
    return prepared_datasets(root or DEFAULT_PREPARED_DIR) if kind == "paper" else shared_default()


def prepared_datasets(root: str, names=None) -> list[dict]:
    """The same datasets read from `prepare`'s output folder (task, instruction, lengths from the manifests)."""
    return [dict(name=name, source=f"prepared:{root}/{name}") for name in PAPER_MIX
            if names is None or name in names]
