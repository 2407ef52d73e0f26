"""Tokenizer files that every client loads as the same tokenizer: transformers 4.x and 5.x, AutoTokenizer and
sentence-transformers, with or without `trust_remote_code`, and qzhou_jax.tokenizer.load_tokenizer.

Written by hf/export.py (exports) and hf/convert.py (imported bases).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TOKENIZATION_FILE = "tokenization_qzhou.py"
TOKENIZER_CLASS = "QZhouTokenizer"
# A class every transformers release knows and that reads tokenizer.json as it is (5.x records its own
# "TokenizersBackend", which 4.x cannot load).
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def save_tokenizer(tokenizer, out_dir: str | os.PathLike, *, model_max_length: int | None = None) -> None:
    """`save_pretrained`, then a tokenizer_config.json with
    - the portable class name, and the extra special tokens under 4.x's key (4.x reads `extra_special_tokens` as
      a name -> token dict);
    - an `auto_map` to tokenization_qzhou.py (copied alongside), without which transformers 5 rebuilds a
      model_type "qwen2" directory's pre-tokeniser (see that file).
    """
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    shutil.copyfile(Path(__file__).with_name(TOKENIZATION_FILE), out_dir / TOKENIZATION_FILE)
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    config["auto_map"] = {"AutoTokenizer": [None, f"{Path(TOKENIZATION_FILE).stem}.{TOKENIZER_CLASS}"]}
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = extra
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    for key in ("is_local", "local_files_only"):  # how this process loaded it, not a property of the tokenizer
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
