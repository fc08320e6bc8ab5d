"""Typed Kimi Linear config, read from an HF `config.json` (`model_type: kimi_linear`).

Accepts both the official checkpoint's fields (`linear_attn_config` with 1-based layer lists,
`first_k_dense_replace`, `moe_layer_freq`) and the extra fields transformers writes
(`layer_types`, `mlp_layer_types`, `linear_*`). Anything missing, invalid or unsupported raises
`ConfigError` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LayerType = Literal["linear_attention", "full_attention"]
MlpType = Literal["dense", "sparse"]


class ConfigError(ValueError):
    """A config.json that this engine cannot run, with the offending field named."""


class LinearAttnConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    num_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    short_conv_kernel_size: int = Field(default=4, gt=0)
    kda_layers: list[int] = Field(default_factory=list)
    full_attn_layers: list[int] = Field(default_factory=list)


class KimiLinearConfig(BaseModel):
    """The architecture fields the engine needs; unknown extra fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model_type: Literal["kimi_linear"]
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0)
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(ge=0)
    v_head_dim: int = Field(gt=0)
    mla_use_nope: bool = True
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    hidden_act: Literal["silu"] = "silu"
    tie_word_embeddings: bool = False
    linear_attn_config: LinearAttnConfig
    num_experts: int = Field(gt=0)
    num_experts_per_token: int = Field(gt=0)
    moe_intermediate_size: int = Field(gt=0)
    num_shared_experts: int = Field(default=1, ge=0)
    moe_renormalize: bool = True
    routed_scaling_factor: float = 1.0
    moe_router_activation_func: Literal["sigmoid"] = "sigmoid"
    num_expert_group: int = Field(default=1, gt=0)
    topk_group: int = Field(default=1, gt=0)
    first_k_dense_replace: int = Field(default=0, ge=0)
    moe_layer_freq: int = Field(default=1, gt=0)
    layer_types: list[LayerType]
    mlp_layer_types: list[MlpType]
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _derive_layer_maps(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        n = data.get("num_hidden_layers")
        lin = data.get("linear_attn_config")
        if lin is None and "linear_num_heads" in data:
            lin = {"num_heads": data["linear_num_heads"], "head_dim": data.get("linear_head_dim"),
                   "short_conv_kernel_size": data.get("linear_conv_kernel_dim", 4)}
            data["linear_attn_config"] = lin
        if isinstance(n, int) and isinstance(lin, dict) and data.get("layer_types") is None:
            data["layer_types"] = _layer_types_from_one_based(lin, n)
        if isinstance(n, int) and data.get("mlp_layer_types") is None:
            first_dense = data.get("first_k_dense_replace", 0)
            freq = data.get("moe_layer_freq", 1)
            if isinstance(first_dense, int) and isinstance(freq, int) and freq > 0:
                data["mlp_layer_types"] = [
                    "sparse" if i >= first_dense and i % freq == 0 else "dense" for i in range(n)
                ]
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> KimiLinearConfig:
        n = self.num_hidden_layers
        if len(self.layer_types) != n:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, num_hidden_layers is {n}")
        if len(self.mlp_layer_types) != n:
            raise ValueError(f"mlp_layer_types has {len(self.mlp_layer_types)} entries, num_hidden_layers is {n}")
        if not self.mla_use_nope:
            raise ValueError("mla_use_nope=false (rotary MLA) is not supported: Kimi Linear uses NoPE")
        if self.num_experts_per_token > self.num_experts:
            raise ValueError(f"num_experts_per_token={self.num_experts_per_token} > num_experts={self.num_experts}")
        if self.num_expert_group != 1 or self.topk_group != 1:
            raise ValueError("num_expert_group/topk_group other than 1 (grouped expert routing) is not supported")
        return self

    @property
    def kda_layer_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "linear_attention"]

    @property
    def mla_layer_ids(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    @property
    def kda_heads(self) -> int:
        return self.linear_attn_config.num_heads

    @property
    def kda_head_dim(self) -> int:
        return self.linear_attn_config.head_dim

    @property
    def conv_size(self) -> int:
        return self.linear_attn_config.short_conv_kernel_size

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values cached per token per MLA layer: the normed latent plus the shared k_pe."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KimiLinearConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> KimiLinearConfig:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"no config.json at {file}")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _layer_types_from_one_based(lin: dict[str, Any], n: int) -> list[str | None]:
    """The checkpoint lists layers 1-based (spec §8.1); a 0-based reading shifts every layer."""
    types: list[str | None] = [None] * n
    for key, kind in (("kda_layers", "linear_attention"), ("full_attn_layers", "full_attention")):
        for layer in lin.get(key, []):
            if not isinstance(layer, int) or not 1 <= layer <= n:
                raise ValueError(f"linear_attn_config.{key} entry {layer!r} is outside 1..{n} (the lists are 1-based)")
            if types[layer - 1] is not None:
                raise ValueError(f"layer {layer} is listed as both KDA and full attention in linear_attn_config")
            types[layer - 1] = kind
    missing = [i + 1 for i, t in enumerate(types) if t is None]
    if missing:
        raise ValueError(f"linear_attn_config lists no attention type for layers {missing} (1-based)")
    return types


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        problems.append(f"{where}: {err['msg']}")
    return "invalid Kimi Linear config: " + "; ".join(problems)
