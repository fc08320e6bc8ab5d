"""Our model against transformers' KimiLinearForCausalLM on random checkpoints it wrote itself."""

from __future__ import annotations

import json

import pytest
import torch
from model_support import write_tiny_checkpoint

from kimi_swarm.backend import load_model
from kimi_swarm.backend.model.config import ConfigError, KimiLinearConfig

CASES = [
    # layer pattern (K = KDA, M = MLA), q_lora_rank, dense layers, sequence lengths
    ("KKKM", None, 1, (1, 37, 64)),
    ("MKKK", 16, 1, (5, 130)),
    ("KMMK", None, 2, (63, 65)),
    ("KKKMKKKMKKM", None, 1, (97,)),
    ("KMK", 24, 3, (2, 129)),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("layers,q_lora,dense,lengths", CASES)
def test_logits_match_transformers(tmp_path, layers, q_lora, dense, lengths):
    ref = write_tiny_checkpoint(tmp_path, seed=len(layers), layers=layers, q_lora_rank=q_lora, dense_layers=dense)
    ours = load_model(tmp_path)
    gen = torch.Generator().manual_seed(1)
    for length in lengths:
        ids = torch.randint(0, 300, (2, length), generator=gen)
        with torch.no_grad():
            expected = ref(ids).logits.float()
        assert rel_err(ours(ids), expected) <= 1e-4, (layers, length)


def test_tied_embeddings(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = write_tiny_checkpoint(tmp_path, layers="KM", tie=True)
    ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert rel_err(load_model(tmp_path)(ids), ref(ids).logits.float()) <= 1e-4
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    tied = load_model(tmp_path)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_step_decode_equals_full_sequence(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KMKKM", q_lora_rank=16)
    model = load_model(tmp_path)
    ids = torch.randint(0, 300, (3, 90), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    ctx = model.new_context(3)
    prefix = 70
    step_logits = [model(ids[:, :prefix], ctx)]
    for t in range(prefix, ids.shape[1]):
        step_logits.append(model(ids[:, t:t + 1], ctx))
    assert rel_err(torch.cat(step_logits, dim=1), full) <= 1e-4


def test_chunked_prefill_carries_state(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KKM")
    model = load_model(tmp_path)
    ids = torch.randint(0, 300, (1, 150), generator=torch.Generator().manual_seed(3))
    ctx = model.new_context(1)
    pieces = [model(ids[:, a:b], ctx) for a, b in ((0, 40), (40, 41), (41, 150))]
    assert rel_err(torch.cat(pieces, dim=1), model(ids)) <= 1e-4


def test_bf16_checkpoint_loads_in_both_dtypes(tmp_path):
    from safetensors.torch import load_file

    ref = write_tiny_checkpoint(tmp_path, layers="KKKM", dtype=torch.bfloat16).float()
    ids = torch.randint(0, 300, (1, 33))
    with torch.no_grad():
        assert rel_err(load_model(tmp_path, dtype=torch.float32)(ids), ref(ids).logits.float()) <= 1e-4
    bf16 = load_model(tmp_path, dtype=torch.bfloat16)
    stored = load_file(tmp_path / "model.safetensors")
    q = bf16.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16 and torch.equal(q, stored["model.layers.0.self_attn.q_proj.weight"])
    assert bf16.model.layers[0].self_attn.A_log.dtype == torch.float32
    router = bf16.model.layers[1].block_sparse_moe.gate.weight  # read in fp32: held in fp32, exactly the stored values
    assert router.dtype == torch.float32
    assert torch.equal(router, stored["model.layers.1.block_sparse_moe.gate.weight"].float())
    assert torch.equal(bf16.model.layers[1].block_sparse_moe.experts.w2[3],
                       stored["model.layers.1.block_sparse_moe.experts.3.w2.weight"])
    assert torch.isfinite(bf16(ids)).all()


def test_config_reads_official_fields():
    config = KimiLinearConfig.from_dict(OFFICIAL_CONFIG)
    assert config.kda_layer_ids == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18, 20, 21, 22, 24, 25]
    assert config.mla_layer_ids == [3, 7, 11, 15, 19, 23, 26]
    assert config.mlp_layer_types[0] == "dense" and set(config.mlp_layer_types[1:]) == {"sparse"}
    assert config.latent_dim == 576 and config.qk_head_dim == 192


@pytest.mark.parametrize("patch,field", [
    ({"kv_lora_rank": None}, "kv_lora_rank"),
    ({"model_type": "llama"}, "model_type"),
    ({"linear_attn_config": {**OFFICIAL_LINEAR, "kda_layers": [0, 1]}}, "1-based"),
    ({"num_experts_per_token": 512}, "num_experts_per_token"),
    ({"mla_use_nope": False}, "mla_use_nope"),
    ({"hidden_size": -1}, "hidden_size"),
] if (OFFICIAL_LINEAR := {"num_heads": 32, "head_dim": 128, "short_conv_kernel_size": 4,
                          "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
                          "full_attn_layers": [4, 8, 12, 16, 20, 24, 27]}) else [])
def test_config_errors_name_the_field(patch, field):
    with pytest.raises(ConfigError, match=field):
        KimiLinearConfig.from_dict({**OFFICIAL_CONFIG, **patch})


def test_config_missing_field(tmp_path):
    data = dict(OFFICIAL_CONFIG)
    del data["num_experts"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="num_experts"):
        KimiLinearConfig.from_pretrained(tmp_path)


OFFICIAL_CONFIG = {
    "architectures": ["KimiLinearForCausalLM"], "model_type": "kimi_linear", "hidden_size": 2304,
    "num_hidden_layers": 27, "vocab_size": 163840, "intermediate_size": 9216, "num_attention_heads": 32,
    "num_key_value_heads": 32, "head_dim": 72, "q_lora_rank": None, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "mla_use_nope": True,
    "rope_theta": 10000.0, "rope_scaling": None, "model_max_length": 1048576, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "tie_word_embeddings": False, "dtype": "bfloat16", "bos_token_id": 163584,
    "eos_token_id": 163586, "pad_token_id": 163839,
    "linear_attn_config": {"num_heads": 32, "head_dim": 128, "short_conv_kernel_size": 4,
                           "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
                           "full_attn_layers": [4, 8, 12, 16, 20, 24, 27]},
    "num_experts": 256, "num_experts_per_token": 8, "num_shared_experts": 1, "moe_intermediate_size": 1024,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "moe_router_activation_func": "sigmoid",
    "moe_renormalize": True, "routed_scaling_factor": 2.446, "use_grouped_topk": True, "num_expert_group": 1,
    "topk_group": 1, "num_nextn_predict_layers": 0, "use_cache": True, "initializer_range": 0.02,
}


@pytest.mark.parametrize("q_lora,kda_heads,quantization,kda_fused,mla_fused", [
    (16, 16, None, True, True), (None, 2, None, True, True), (None, 16, "fp8", True, False),
    (16, 2, "fp8", False, False),
], ids=["low-rank-query", "full-query", "fp8", "fp8-kda-unfusable"])
def test_fused_projections_keep_the_logits(tmp_path, q_lora, kda_heads, quantization, kda_fused, mla_fused):
    """KDA's six input projections, MLA's query and latent projections and SwiGLU's gate and up as one GEMM each
    compute what the separate layers did, in a prefill and in step decode; no weight is held twice. FP8 layers
    fuse with FP8 layers only: widths that are not multiples of 16 stay in full precision (b_proj of 2 heads, the
    40-wide latent projection), and their layer keeps its separate projections."""
    write_tiny_checkpoint(tmp_path, layers="KMKM", q_lora_rank=q_lora, kda_heads=kda_heads, seed=4)
    model = load_model(tmp_path, quantization=quantization)
    ids = torch.randint(0, 300, (2, 60), generator=torch.Generator().manual_seed(5))

    def prefill_then_steps() -> torch.Tensor:
        ctx = model.new_context(2)
        logits = [model(ids[:, :50], ctx)]
        logits += [model(ids[:, t:t + 1], ctx) for t in range(50, 60)]
        return torch.cat(logits, dim=1)

    def weight_bytes() -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    with torch.no_grad():
        separate, separate_bytes = prefill_then_steps(), weight_bytes()
        model.fuse_projections_()
        fused = prefill_then_steps()
    layers = model.model.layers
    assert all(hasattr(layer.self_attn, "in_proj") == mla_fused for layer in layers[1::2])
    assert all(hasattr(layer.self_attn, "in_proj") == kda_fused for layer in layers[0::2])
    assert hasattr(layers[0].mlp, "gate_up_proj") and hasattr(layers[1].block_sparse_moe.shared_experts,
                                                                "gate_up_proj")
    assert not hasattr(layers[0].mlp, "gate_proj")
    assert weight_bytes() == separate_bytes
    assert rel_err(fused, separate) <= 1e-5
