"""Model configuration: the Qwen2 architecture numbers plus the embedding-model switches.

`ModelConfig.from_hf` reads a transformers Qwen2 `config.json` (dict or directory); `to_hf` writes one back, marked
bidirectional so exported models say what they are. Presets cover the Qwen2.5 sizes of docs/recipe.md section 1 and tiny
sizes for tests and the demo.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

ATTENTION_MODES = ("bidirectional", "causal")
POOLING_MODES = ("mean", "last")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
# LoRA targets: peft's module names for Qwen2 (model/lora.py; hf/peft.py writes adapters under these names).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_heads, as in Qwen2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False  # kept for export; the encoder itself has no LM head
    initializer_range: float = 0.02
    # Embedding-model switches (docs/recipe.md section 1): bidirectional attention, mean pooling, L2 norm.
    attention: str = "bidirectional"
    pooling: str = "mean"
    # Numerics and memory: params may stay fp32 (master weights) while matmuls run in bf16.
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    # Attention kernel (model/attention.py): auto | xla | cudnn | splash; auto picks by platform.
    attention_impl: str = "auto"
    # Partial fine-tuning: the embedding and the bottom `frozen_layers` layers get no gradient and no optimizer
    # state (model.trainable = "top:N" sets L - N; "layers" freezes the embedding only). A training choice:
    # restored models run whole (checkpoint.model_config_from_dict).
    frozen_layers: int = 0
    freeze_embedding: bool = False  # implied by frozen_layers > 0
    # LoRA (model/lora.py): rank 0 = off. W x + (alpha / rank) B A dropout(x) on the `lora_targets` projections;
    # the base weights are frozen. Restored models are merged (checkpoint.restore_params), so serving is unchanged.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if not 0 <= self.frozen_layers < max(self.num_layers, 1):
            raise ValueError(f"frozen_layers must be in [0, {self.num_layers}), got {self.frozen_layers}")
        if not isinstance(self.lora_targets, tuple):  # from JSON (checkpoint meta): a list
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lora_rank:
            unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
            if unknown or not self.lora_targets:
                raise ValueError(f"lora_targets must be a non-empty subset of {LORA_TARGETS}, got {self.lora_targets}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if not self.lora_alpha > 0:
                raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
            if self.frozen_layers or self.freeze_embedding:
                raise ValueError("LoRA freezes the whole base already; it does not combine with partial fine-tuning "
                                 "(trainable 'top:N' / 'layers')")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def lora_scale(self) -> float:
        """peft's scaling (use_rslora=False): alpha / rank."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def embedding_frozen(self) -> bool:
        return bool(self.freeze_embedding or self.frozen_layers)

    @property
    def partial(self) -> bool:
        """Partial fine-tuning (some of the base frozen, the rest trained in place; no adapters)."""
        return self.embedding_frozen

    def whole(self) -> "ModelConfig":
        """The network without the training choices of partial fine-tuning (LoRA, a part of the params, stays)."""
        return self.replace(frozen_layers=0, freeze_embedding=False)

    def without_lora(self) -> "ModelConfig":
        return self.replace(lora_rank=0)

    def num_params(self) -> int:
        d, f, h, kv, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_size
        attn = d * h * hd + h * hd + 2 * (d * kv * hd + kv * hd) + h * hd * d
        layer = attn + 3 * d * f + 2 * d
        return self.vocab_size * d + self.num_layers * layer + d

    # ---------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | os.PathLike, **overrides) -> "ModelConfig":
        """Builds a config from a Qwen2 `config.json` (a dict, the file, or its directory)."""
        if not isinstance(hf, dict):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                hf = json.load(f)
        model_type = hf.get("model_type", "qwen2")
        if model_type not in ("qwen2",):
            raise ValueError(f"expected a Qwen2 config (model_type 'qwen2'), got model_type {model_type!r}")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise NotImplementedError(f"RoPE scaling {rope} is not supported")
        theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        fields = dict(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"],
                num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                head_dim=hf.get("head_dim"),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta),
                max_position_embeddings=hf.get("max_position_embeddings", 32768),
                tie_word_embeddings=hf.get("tie_word_embeddings", False),
                initializer_range=hf.get("initializer_range", 0.02),
        )
        # An exported qzhou-jax model records its own switches.
        for key in ("attention", "pooling"):
            if f"qzhou_{key}" in hf:
                fields[key] = hf[f"qzhou_{key}"]
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """A transformers Qwen2Config dict; `qzhou_*` keys record the embedding switches."""
        return {
                "architectures": ["Qwen2Model"],
                "model_type": "qwen2",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_size,
                "hidden_act": "silu",
                "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta,
                "max_position_embeddings": self.max_position_embeddings,
                "tie_word_embeddings": self.tie_word_embeddings,
                "initializer_range": self.initializer_range,
                "use_sliding_window": False,
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "eos_token_id": 151643,
                "torch_dtype": torch_dtype,
                "is_causal": self.attention == "causal",
                "qzhou_attention": self.attention,
                "qzhou_pooling": self.pooling,
        }


# Qwen2.5 family (docs/recipe.md section 1). Vocab rows are padded: 151936 on the small sizes, 152064 on 7B.
PRESETS: dict[str, ModelConfig] = {
        "qwen2.5-0.5b": ModelConfig(151936, 896, 4864, 24, 14, 2, tie_word_embeddings=True),
        "qwen2.5-1.5b": ModelConfig(151936, 1536, 8960, 28, 12, 2, tie_word_embeddings=True),
        "qwen2.5-3b": ModelConfig(151936, 2048, 11008, 36, 16, 2, tie_word_embeddings=True),
        "qwen2.5-7b": ModelConfig(152064, 3584, 18944, 28, 28, 4, tie_word_embeddings=False),
        # Tiny sizes: tests and the CPU demo. The demo keeps the real Qwen2.5 vocabulary so the real tokenizer works.
        "tiny": ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=512),
        "small": ModelConfig(vocab_size=151665, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=2048),
    "demo": ModelConfig(vocab_size=151665, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=2048),
}


def trainable_fields(trainable: str, num_layers: int) -> dict:
    """model.trainable -> ModelConfig fields: "all" -> everything trains; "top:N" -> frozen_layers = num_layers - N
    (the top N layers and the final norm train; the embedding and the layers below are frozen); "layers" (= top:L)
    -> every layer and the final norm train, the embedding is frozen."""
    if trainable in ("", "all"):
        return dict(frozen_layers=0, freeze_embedding=False)
    if trainable == "layers":
        return dict(frozen_layers=0, freeze_embedding=True)
    kind, _, count = trainable.partition(":")
    if kind != "top" or not count.isdigit() or not 1 <= int(count) <= num_layers:
        raise ValueError(f"trainable must be 'all', 'layers' or 'top:N' with 1 <= N <= {num_layers} layers, "
                         f"got {trainable!r}")
    return dict(frozen_layers=num_layers - int(count), freeze_embedding=True)


def frozen_layers_for(trainable: str, num_layers: int) -> int:
    """model.trainable -> ModelConfig.frozen_layers (see `trainable_fields`)."""
    return trainable_fields(trainable, num_layers)["frozen_layers"]


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
