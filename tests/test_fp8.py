"""FP8 weights quantised while loading: what is quantised, that loading equals quantising the loaded model, the
memory it takes, and the errors for what cannot run it. The CPU path dequantises per call (kernels/fp8_reference);
the FP8 GEMMs on the GPU are checked in tests/test_gpu_engine.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from model_support import write_chat_checkpoint, write_tiny_checkpoint
from torch import nn

from kimi_swarm.backend import Engine, SamplingParams, load_model
from kimi_swarm.backend.model import fp8
from kimi_swarm.backend.model.moe import StackedExperts
from kimi_swarm.kernels.fp8_reference import FP8
from kimi_swarm.launch import LaunchError, open_backend


def test_fp8_load_quantises_the_linear_layers_and_experts_only(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KKKM", seed=3)
    model = load_model(tmp_path, quantization="fp8")
    quantised, kept = [], []
    for name, module in model.model.layers.named_modules():
        if isinstance(module, fp8.Fp8Linear):
            assert module.weight.dtype == FP8 and module.weight_scale.shape == (module.out_features,)
            quantised.append(name)
        elif isinstance(module, nn.Linear):
            assert module.weight.dtype == torch.float32
            kept.append(name)
        elif isinstance(module, StackedExperts):
            assert module.w13.dtype == module.w2.dtype == FP8
            assert module.w13_scale.shape == module.w13.shape[:2] and module.w2_scale.shape == module.w2.shape[:2]
            quantised.append(name)
    assert "3.self_attn.kv_b_proj" in kept  # MLA reads its weight directly
    assert "0.self_attn.b_proj" in kept  # 2 output rows: not a multiple of 16
    assert {"0.self_attn.q_proj", "3.self_attn.o_proj", "1.block_sparse_moe.experts",
            "1.block_sparse_moe.shared_experts.down_proj", "0.mlp.gate_proj"} <= set(quantised)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.1.block_sparse_moe.gate.weight", "model.layers.0.self_attn.A_log"):
        assert model.get_parameter(name).dtype == torch.float32, name


def test_quantising_while_loading_equals_quantising_the_loaded_model(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KKKM", seed=4, dtype=torch.bfloat16)
    loaded = load_model(tmp_path, dtype=torch.bfloat16, quantization="fp8")
    after = load_model(tmp_path, dtype=torch.bfloat16)
    names = fp8.quantize_fp8_(after)
    assert len(names) > 10
    want = after.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in got.items():
        assert tensor.dtype == want[name].dtype and torch.equal(tensor.view(torch.uint8) if tensor.dtype == FP8
                                                                 else tensor, want[name].view(torch.uint8)
                                                                 if tensor.dtype == FP8 else want[name]), name


def test_fp8_layers_stay_within_the_e4m3_rounding_of_full_precision():
    """Per layer, FP8 weights with per-row scales change the output by about e4m3's rounding (3 mantissa bits:
    at most 1/16 relative per weight, about 2.5% RMS per GEMM, more through the experts' two). Whole random models are a poor yardstick: a tiny random
    model moves its logits by 9% for 0.1% noise on its weights; model-level accuracy is measured by the quality
    benchmark (benchmarks/RESULTS.md)."""
    torch.manual_seed(0)
    linear = nn.Linear(256, 128, bias=False)
    experts = StackedExperts(8, 256, 64)
    for w in (experts.w13, experts.w2):
        nn.init.normal_(w, std=w.shape[-1] ** -0.5)
    x = torch.randn(32, 256)
    ids, weights = torch.stack([torch.randperm(8)[:2] for _ in range(32)]), torch.rand(32, 2)
    with torch.no_grad():
        full = (linear(x), experts(x, ids, weights))
        holder = nn.Module()
        holder.model = nn.Module()
        holder.model.layers = nn.ModuleList([nn.ModuleDict({"proj": linear, "experts": experts})])
        assert fp8.quantize_fp8_(holder) == ["model.layers.0.proj", "model.layers.0.experts"]
        quantised = (holder.model.layers[0]["proj"](x), experts(x, ids, weights))
    for got, want in zip(quantised, full, strict=True):
        error = ((got.double() - want.double()).norm() / want.double().norm()).item()
        assert 0.002 < error <= 0.06


def test_fp8_loading_never_holds_the_full_precision_weights(tmp_path):
    """A checkpoint that is mostly experts (fp32, ~200 MB) loads in FP8 with well under half its size of extra
    resident memory: each tensor is quantised as it is read (see test_weights for the warm-up)."""
    warm, big = tmp_path / "warm", tmp_path / "big"
    write_tiny_checkpoint(warm, layers="KM")
    write_tiny_checkpoint(big, layers="KKKM", hidden=512, kda_heads=4, kda_dim=128, experts=48)
    size = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    assert size > 150e6
    script = textwrap.dedent(f"""
        import re, resource
        from kimi_swarm.backend import load_model
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
        load_model({str(warm)!r}, quantization="fp8")
        base = rss()
        model = load_model({str(big)!r}, quantization="fp8")
        peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
        print(peak - base, sum(p.numel() * p.element_size() for p in model.parameters()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra, resident = map(int, out.stdout.strip().splitlines()[-1].split())
    assert resident <= 0.35 * size
    assert extra <= 0.5 * size, f"loading took {extra / 1e6:.0f} MB extra for a {size / 1e6:.0f} MB checkpoint"


async def test_engine_generates_from_fp8_weights_on_the_cpu(tmp_path):
    write_chat_checkpoint(tmp_path, layers="KKKM", seed=6)
    engine = Engine.from_pretrained(tmp_path, device="cpu", quantization="fp8")
    try:
        assert isinstance(engine.model.model.layers[0].self_attn.q_proj, fp8.Fp8Linear)
        session = await engine.session("hello")
        completion = await session.generate(SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
        assert len(completion.token_ids) == 6
    finally:
        engine.shutdown()


def test_unknown_quantization_is_refused_by_name(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KM")
    with pytest.raises(ValueError, match="unknown quantization 'int4'; use one of fp8"):
        load_model(tmp_path, quantization="int4")


def test_fp8_on_a_gpu_without_fp8_tensor_cores_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"compute capability 8.9 .*NVIDIA A100-SXM4-80GB is 8.0"):
        fp8.check_quantization("fp8", torch.device("cuda"))


def test_quantization_is_for_the_in_process_engine_only():
    with pytest.raises(LaunchError, match="--quantization"):
        open_backend("some-model", ["http://127.0.0.1:9/v1"], quantization="fp8")
