"""QZhou-Embedding for transformers: Qwen2Model with bidirectional attention.

This file is shipped inside every qzhou-jax export (config.json's `auto_map` points at it), so that

    model = transformers.AutoModel.from_pretrained(path, trust_remote_code=True)

gives the embedding model rather than a causal LM trunk. Without `trust_remote_code=True` transformers falls back
to its stock Qwen2Model: transformers 5.x then still attends bidirectionally (it honours config.json's
`is_causal: false`), older releases attend causally and the embeddings are wrong.

Only the attention mask differs from Qwen2 (docs/recipe.md section 1): every token attends to every non-pad token of its
text. Positions count from each row's first real token (0, 1, ...), as in the JAX encoder, so left and right padding
give the same hidden states. Pooling (mean over non-pad tokens, then L2 norm) is left to the caller or to
sentence-transformers' Pooling/Normalize modules. When config.json says the model is causal (`qzhou_attention`
"causal"), the class behaves exactly as the stock Qwen2Model.

It depends on torch and transformers only (it runs outside qzhou-jax). Written for transformers 5.x; with the 4.x
releases that lack `masking_utils.create_bidirectional_mask` it passes a 4D additive mask instead.
"""
import torch
from transformers import Qwen2Config, Qwen2Model

try:
    from transformers.masking_utils import create_bidirectional_mask
except ImportError:  # older transformers: a 4D additive mask is used instead
    create_bidirectional_mask = None


def is_bidirectional(config) -> bool:
    """`qzhou_attention` decides; a plain Qwen2 config is bidirectional only if it says `is_causal: false`."""
    attention = getattr(config, "qzhou_attention", None)
    if attention is not None:
        if attention not in ("bidirectional", "causal"):
            raise ValueError(f"config.json: qzhou_attention must be 'bidirectional' or 'causal', got {attention!r}")
        return attention == "bidirectional"
    return not getattr(config, "is_causal", True)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] 0/1 mask -> [B, L] positions starting at 0 on each row's first real token (pads: clamped)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] padding mask -> [B, 1, L, L] additive mask: every query sees every non-pad key."""
    batch, length = attention_mask.shape
    blocked = ~attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        blocked, torch.finfo(dtype).min)


class QZhouEmbeddingModel(Qwen2Model):
    """Qwen2Model whose self-attention is bidirectional (unless the config says causal)."""

    config_class = Qwen2Config

    def __init__(self, config):
        super().__init__(config)
        self.bidirectional = is_bidirectional(config)
        # Attention kernels (sdpa, flash) read `is_causal` from the module when no mask is materialised.
        for layer in self.layers:
            layer.self_attn.is_causal = not self.bidirectional

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        if not self.bidirectional or isinstance(attention_mask, dict):  # causal, or masks already built
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, **kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        if position_ids is None and attention_mask.dim() == 2:
            position_ids = positions_from_mask(attention_mask)
        if attention_mask.dim() == 2:
            if create_bidirectional_mask is not None:
                # Always materialise: with no padding transformers would otherwise return None and let the kernel
                # fall back on its own causal default.
                mask = create_bidirectional_mask(self.config, inputs_embeds, attention_mask,
                                                 allow_is_bidirectional_skip=False)
                attention_mask = {"full_attention": mask}
            else:
                attention_mask = _additive_mask(attention_mask, inputs_embeds.dtype)
        kwargs.setdefault("use_cache", False)  # a KV cache means nothing for a bidirectional encoder
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, **kwargs)
