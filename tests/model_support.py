"""Small random Kimi Linear checkpoints in the official format, written by transformers' save_pretrained."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def tiny_config_kwargs(*, layers: str = "KKKM", q_lora_rank: int | None = None, dense_layers: int = 1,
                       vocab: int = 300, hidden: int = 64, kda_heads: int = 2, kda_dim: int = 16,
                       experts: int = 8, top_k: int = 2, tie: bool = False) -> dict:
    """Config kwargs for transformers' KimiLinearConfig; `layers` spells each layer K (KDA) or M (MLA)."""
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden // 2,
        num_hidden_layers=len(layers), num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
        q_lora_rank=q_lora_rank, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
        num_experts=experts, num_experts_per_token=top_k, num_shared_experts=1, routed_scaling_factor=2.446,
        first_k_dense_replace=dense_layers, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=tie,
        linear_attn_config={
            "num_heads": kda_heads, "head_dim": kda_dim, "short_conv_kernel_size": 4,
            "kda_layers": [i + 1 for i, c in enumerate(layers) if c == "K"],
            "full_attn_layers": [i + 1 for i, c in enumerate(layers) if c == "M"],
        },
        mlp_layer_types=["dense" if i < dense_layers else "sparse" for i in range(len(layers))],
    )


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Explicit random init with signal-preserving scales (uninitialised memory would flatter routing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.0, 2.0, generator=gen))
            elif name.endswith("dt_bias") or name.endswith("e_score_correction_bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)


def write_tiny_checkpoint(directory: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                          max_shard_size: str | None = None, **kwargs):
    """Writes config.json + safetensors with transformers; returns the transformers model (eval, fp32)."""
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    config = KimiLinearConfig(**tiny_config_kwargs(**kwargs))
    torch.manual_seed(seed)
    model = KimiLinearForCausalLM(config)
    randomize_(model, seed)
    model = model.to(dtype).eval()
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **save_kwargs)
    return model


def write_chat_checkpoint(directory: Path, *, layers: str, seed: int) -> Path:
    """A tiny checkpoint with the byte-level tokenizer (Kimi's special tokens), for engine and chat tests."""
    from kimi_swarm.backend.model.tokenizer import ByteTokenizer

    write_tiny_checkpoint(directory, layers=layers, vocab=300, seed=seed)
    ByteTokenizer().save(directory)
    return directory


async def extend_then_generate(session, suffix: list[int], params):
    """A forked session's continuation: its own suffix, then a generation."""
    await session.extend(suffix)
    return await session.generate(params)


def forks_prefilled_with_and_without_sharing(model, cache, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 3 forks of a root session (3 full pages + 5 tokens) prefilling 9 new tokens each in one
    batch, once in shared-prefix mode and once not; checks that the mode found the 3 shared pages."""
    from kimi_swarm.backend.engine.paged_context import PagedContext

    page = cache.page_size
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    root, root_pages = cache.alloc_slot(), [cache.alloc_page() for _ in range(4)]
    for index, number in enumerate(root_pages):
        cache.set_table_entry(root, index, number)
    prefix = torch.randint(0, model.config.vocab_size, (1, 3 * page + 5), generator=gen).to(device)
    model(prefix, PagedContext(cache, [root], [root_pages], [0], 3 * page + 5))
    suffixes = torch.randint(0, model.config.vocab_size, (3, 9), generator=gen).to(device)

    def prefill_forks(shared_prefix: bool) -> torch.Tensor:
        slots = cache.fresh_slots(3)
        cache.copy_slot(root, slots)
        tables = []
        for slot in slots:
            cache.share_pages([root_pages[3]])
            tail = cache.writable_page(root_pages[3])  # the root's partial last page, copied on write
            tables.append([*root_pages[:3], tail])
            for index, number in enumerate(tables[-1]):
                cache.set_table_entry(slot, index, number)
        ctx = PagedContext(cache, slots, tables, [3 * page + 5] * 3, 9, shared_pages=None if shared_prefix else 0)
        assert ctx.shared_pages == (3 if shared_prefix else 0)
        return model(suffixes, ctx).float()

    with torch.inference_mode():
        return prefill_forks(shared_prefix=True), prefill_forks(shared_prefix=False)
