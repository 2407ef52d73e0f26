"""Dataset entries for config files: the shared public data sets with their instructions, by task type.

Configs compose these lists (and their own corpora) into `config.data.datasets`; lengths, negatives and slices
are arguments so the demo and the full-size stages share one definition.
"""
from __future__ import annotations

from qzhou_jax.instructions import TRAINING_INSTRUCTIONS as INSTRUCTIONS  # one table for training and eval


def _entry(name, source, split, instruction, lengths, max_examples=None, **extra):
    entry = dict(name=name, source=source, split=split, instruction=instruction, **lengths, **extra)
    if max_examples:
        entry["max_examples"] = max_examples
    return entry


def retrieval(max_len_query=256, max_len_passage=1536, num_negatives=4, max_examples=None, chinese=True):
    lengths = dict(max_len_query=max_len_query, max_len_passage=max_len_passage, num_negatives=num_negatives)
    out = [
        _entry("scifact", "shared:scifact", "train", INSTRUCTIONS["scifact"], lengths, max_examples),
        _entry("trecqa", "shared:trecqa", "train", INSTRUCTIONS["trecqa"], lengths, max_examples),
    ]
    if chinese:  # reading comprehension; context truncated so the question survives token truncation
        out.append(_entry("cmrc2018", "shared:cmrc2018", "trial", INSTRUCTIONS["cmrc2018"], lengths, max_examples,
                          max_chars=4 * max_len_query))
    return out


def pair_score(max_len=256, max_examples=None, chinese=True):
    lengths = dict(max_len_query=max_len, max_len_passage=max_len)
    out = [
        _entry("stsb", "shared:stsb", "train", INSTRUCTIONS["sts"], lengths, max_examples),
        _entry("sickr", "shared:sickr", "train", INSTRUCTIONS["sts"], lengths, max_examples),
    ]
    if chinese:
        out += [_entry("ocnli", "shared:ocnli", "train", INSTRUCTIONS["nli"], lengths, max_examples),
                _entry("lcqmc", "shared:lcqmc", "dev", INSTRUCTIONS["sts"], lengths, max_examples),
                _entry("atec", "shared:atec", "valid", INSTRUCTIONS["sts"], lengths, max_examples)]
    return out


def classification(max_len=256, num_negatives=4, max_examples=None, chinese=True):
    lengths = dict(max_len_query=max_len, max_len_passage=max_len, num_negatives=num_negatives)
    out = [
        _entry("banking77", "shared:banking77", "train", INSTRUCTIONS["banking77"], lengths, max_examples),
        _entry("trec", "shared:trec", "train", INSTRUCTIONS["trec"], lengths, max_examples),
        _entry("sst2", "shared:sst2", "train", INSTRUCTIONS["sst2"], lengths, max_examples),
    ]
    if chinese:  # Waimai has no official split: the shared copy is one "all" file
        out.append(_entry("waimai", "shared:waimai", "all", INSTRUCTIONS["waimai"], lengths, max_examples))
    return out
