"""The Kimi Linear decoder: pre-norm blocks of KDA or MLA attention plus a dense MLP or MoE.

Module names mirror the official checkpoint (`model.layers.N.self_attn.*`, `block_sparse_moe.*`,
`mlp.*`, `lm_head`) so weights load by name; routed experts are stacked per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from kimi_swarm.kernels import rms_norm

from .config import KimiLinearConfig
from .context import DenseContext, ForwardContext
from .kda_layer import KimiDeltaAttention
from .mla_layer import KimiMLAAttention
from .moe import SparseMoE, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, config: KimiLinearConfig, layer_id: int):
        super().__init__()
        if config.layer_types[layer_id] == "linear_attention":
            self.self_attn = KimiDeltaAttention(config, config.kda_layer_ids.index(layer_id))
        else:
            self.self_attn = KimiMLAAttention(config, config.mla_layer_ids.index(layer_id))
        if config.mlp_layer_types[layer_id] == "sparse":
            self.block_sparse_moe = SparseMoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        ffn = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        return x + ffn(self.post_attention_layernorm(x))


class KimiLinearModel(nn.Module):
    def __init__(self, config: KimiLinearConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class KimiLinearForCausalLM(nn.Module):
    """`model(input_ids)` -> logits [batch, seq, vocab]; pass a context to carry state across calls."""

    def __init__(self, config: KimiLinearConfig):
        super().__init__()
        self.config = config
        self.model = KimiLinearModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.no_grad()
    def fuse_projections_(self) -> None:
        """Linear layers that read the same input become one GEMM each (backend/model/fusion.py): for inference
        only, and once the weights are final (loaded, quantised); the engine does it when it takes the model."""
        for module in list(self.modules()):
            if module is not self and hasattr(module, "fuse_projections_"):
                module.fuse_projections_()

    def new_context(self, batch: int) -> DenseContext:
        return DenseContext(self.config, batch, device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext | None = None, *,
                last_only: bool = False) -> torch.Tensor:
        """Logits for input_ids [N, T]; with `last_only` just the last position's, as [N, 1, vocab]."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids has no tokens")
        vocab = self.config.vocab_size
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab}), got range "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        ctx = ctx if ctx is not None else self.new_context(input_ids.shape[0])
        return self.forward_unchecked(input_ids.to(self.device), ctx, last_only=last_only)

    def forward_unchecked(self, input_ids: torch.Tensor, ctx: ForwardContext, *, last_only: bool = False
                          ) -> torch.Tensor:
        """forward without checking the ids (that check reads them back to the host): for ids on the model's
        device that the caller knows are in range, e.g. inside a CUDA graph."""
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, ctx)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x)).float()
