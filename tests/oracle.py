"""The PyTorch oracle: tiny random transformers Qwen2 models written to disk, and their outputs.

Only tests import torch. `bidirectional=True` runs the stock `Qwen2Model` with transformers' own bidirectional mask
(and `is_causal` off on every attention layer), which is what QZhou-Embedding's serving code does.
"""
from __future__ import annotations

import numpy as np
import torch
import transformers
from transformers.masking_utils import create_bidirectional_mask

SMALL_CONFIGS = {
    # GQA ratio 2, untied.
    "gqa": dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False),
    # Multi-head (ratio 1), tied embeddings.
    "mha_tied": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                     num_key_value_heads=3, tie_word_embeddings=True),
    # Odd hidden size, GQA ratio 5 (one KV head), rope theta 1e4.
    "odd": dict(hidden_size=90, intermediate_size=130, num_hidden_layers=2, num_attention_heads=5,
                num_key_value_heads=1, tie_word_embeddings=False, rope_theta=10000.0),
}


def make_hf_model(directory, name="gqa", vocab_size=300, seed=0, causal_lm=False, dtype=torch.float32, **overrides):
    """Writes a tiny random Qwen2 checkpoint with save_pretrained; returns the torch model (eval mode, fp32)."""
    torch.manual_seed(seed)
    kwargs = dict(SMALL_CONFIGS[name], vocab_size=vocab_size, max_position_embeddings=256, rms_norm_eps=1e-6)
    kwargs.update(overrides)
    theta = kwargs.pop("rope_theta", 1_000_000.0)
    config = transformers.Qwen2Config(**kwargs, rope_parameters={"rope_type": "default", "rope_theta": theta})
    config._attn_implementation = "eager"
    cls = transformers.Qwen2ForCausalLM if causal_lm else transformers.Qwen2Model
    model = cls(config).eval()
    with torch.no_grad():  # random biases and norm scales, so their mapping is really tested
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.to(dtype).save_pretrained(directory)
    return model.float() if not causal_lm else model.model.float()


def torch_hidden(model, input_ids, attention_mask, bidirectional: bool) -> np.ndarray:
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    for layer in model.layers:
        layer.self_attn.is_causal = not bidirectional
    with torch.no_grad():
        if bidirectional:
            embeds = model.embed_tokens(ids)
            full = create_bidirectional_mask(model.config, embeds, mask, allow_is_bidirectional_skip=False)
            out = model(input_ids=ids, attention_mask={"full_attention": full})
        else:
            out = model(input_ids=ids, attention_mask=mask)
    return out.last_hidden_state.float().numpy()


def torch_mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, np.float64)[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------ other bases (hf/convert)
LLAMA_FAMILY = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM")}
CORPUS = ("the cat sat on the mat. a dog ran in the park. 12345 birds flew over 67 houses! "
          "what is the capital of france? paris is the capital. how are you today, my friend?") * 4


def llama_style_tokenizer(vocab_size: int = 300) -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE trained here, with Llama's habits: <s>/</s>/<unk>, BOS added to every text by a
    template post-processor, no pad token (the importer has to pick one)."""
    import tokenizers

    backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size - 8, special_tokens=["<unk>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([CORPUS], trainer)
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def make_llama_model(directory, arch: str = "llama", vocab_size: int = 300, seed: int = 0, tie: bool = True,
                     dtype=torch.float32, **overrides):
    """A tiny random Llama- or Mistral-architecture causal LM (GQA, no biases) and its tokenizer, saved with
    save_pretrained; returns the torch model in fp32 eval mode."""
    config_name, model_name = LLAMA_FAMILY[arch]
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  tie_word_embeddings=tie, rope_parameters={"rope_type": "default", "rope_theta": 50_000.0})
    kwargs.update(overrides)
    config = getattr(transformers, config_name)(**kwargs)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # random norm scales, so their mapping is really tested
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.to(dtype).save_pretrained(directory)
    llama_style_tokenizer(vocab_size).save_pretrained(directory)
    return model.float()
