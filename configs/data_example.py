"""Example data block: every source kind the shared data folder can feed, small slices, small lengths.

Inspect it with:  python -m qzhou_jax.data.inspect --config configs/data_example.py
Field reference: qzhou_jax/data/spec.py. Stage configs copy `config.data` from here and change sizes.
"""
from qzhou_jax.config.defaults import base

RETRIEVAL_DEFAULTS = dict(max_len_query=64, max_len_passage=256)
SYMMETRIC_DEFAULTS = dict(max_len_query=64, max_len_passage=64)


def get_config():
    config = base()  # the data block with every default key; only `data` is used by inspect
    data = config.data
    data.datasets = [
        # Retrieval: BEIR qrels -> (claim, abstract) pairs; "beir:{data_dir}/scifact" reads the same folder.
        dict(name="scifact", source="shared:scifact", split="train", num_negatives=3,
             instruction="Given a scientific claim, retrieve documents that support or refute the claim",
             **RETRIEVAL_DEFAULTS),
        # Retrieval: answer selection, label-0 answers as hard negatives.
        dict(name="trecqa", source="shared:trecqa", split="train", num_negatives=3,
             instruction="Given a question, retrieve sentences that answer it", **RETRIEVAL_DEFAULTS),
        # Retrieval: reading comprehension (context + joiner + question -> answer), Chinese.
        # max_chars cuts the context so the question after it survives the query's token limit.
        dict(name="cmrc2018", source="shared:cmrc2018", split="dev", num_negatives=3, max_examples=1000,
             max_chars=80, instruction="Given a passage and a question, retrieve the answer",
             max_len_query=128, max_len_passage=256),
        # Pair score (CoSENT): STS 0-5, binary STS, NLI 2/1/0; both directions by default.
        dict(name="stsb", source="shared:stsb", split="train", instruction="Retrieve semantically similar text.",
             **SYMMETRIC_DEFAULTS),
        dict(name="lcqmc", source="shared:lcqmc", split="dev", max_examples=2000,
             instruction="Retrieve semantically similar text.", **SYMMETRIC_DEFAULTS),
        dict(name="ocnli", source="shared:ocnli", split="train",
             instruction="Retrieve semantically similar text.", **SYMMETRIC_DEFAULTS),
        # Classification (example-based): positive of the same label, negatives of other labels.
        dict(name="banking77", source="shared:banking77", split="train", num_negatives=4,
             instruction="Given an online banking query, find the corresponding intents", **SYMMETRIC_DEFAULTS),
        dict(name="waimai", source="shared:waimai", split="all", num_negatives=4,
             instruction="Classify the customer review for online food delivery services",
             **SYMMETRIC_DEFAULTS),
        # Own files work the same way, e.g.
        # dict(name="my_pairs", source="jsonl:/path/to/train.jsonl.gz", task="retrieval"),  # FlagEmbedding rows
        # dict(name="my_sts", source="parquet:/path/to/sts.parquet", task="pair_score", transform="sts",
        #      fields=dict(text_a="s1", text_b="s2", score="gold")),
        # dict(name="glue_stsb", source="tfds:glue/stsb", task="pair_score", data_dir="/path/to/tfds",
        #      fields=dict(score="label")),
    ]
    data.eta = 0.72  # stage 2: retrieval share; None for plain n^alpha (other keys: qzhou_jax/config/defaults.py DATA)
    data.batch_size = dict(retrieval=16, pair_score=48, classification=16)  # global, per task type
    data.buckets = (32, 64, 128, 256)
    return config
