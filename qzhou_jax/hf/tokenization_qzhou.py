"""Shipped inside every exported / imported model directory (tokenizer_config.json's `auto_map`).

transformers 5's AutoTokenizer rebuilds the pre-tokeniser of any directory whose config.json says model_type "qwen2"
(its Qwen2Tokenizer), which tokenises a vocabulary imported from another base (SmolLM2, Llama, Mistral) differently
from the tokenizer.json saved beside it. A tokenizer `auto_map` turns that rebuild off: with it, AutoTokenizer (and
sentence-transformers) load tokenizer.json as it is, whether or not `trust_remote_code` is set.
"""
from transformers import PreTrainedTokenizerFast


class QZhouTokenizer(PreTrainedTokenizerFast):
    """tokenizer.json as saved: no pre-tokeniser or normaliser rebuilt from the model type."""
