"""Checkpoint loading: sharded files, clear errors naming tensors, and bounded peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from model_support import write_tiny_checkpoint
from safetensors.torch import load_file, save_file

from kimi_swarm.backend import load_model
from kimi_swarm.backend.model.weights import WeightLoadError


def test_sharded_checkpoint_matches_single_file(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    write_tiny_checkpoint(single, seed=5, layers="KKM")
    write_tiny_checkpoint(sharded, seed=5, layers="KKM", max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    ids = torch.randint(0, 300, (1, 17))
    assert torch.equal(load_model(single)(ids), load_model(sharded)(ids))


def test_official_dense_names_load(tmp_path):
    """The official checkpoint names the dense layer `mlp.*`; transformers writes `block_sparse_moe.*`."""
    write_tiny_checkpoint(tmp_path, layers="KM")
    reference = load_model(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("layers.0.block_sparse_moe.", "layers.0.mlp."): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "model.safetensors")
    ids = torch.randint(0, 300, (1, 9))
    assert torch.equal(load_model(tmp_path)(ids), reference(ids))


def _edit(tmp_path, fn):
    tensors = load_file(tmp_path / "model.safetensors")
    fn(tensors)
    save_file(tensors, tmp_path / "model.safetensors")


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("model.layers.0.self_attn.b_proj.weight"), "missing tensors: model.layers.0.self_attn.b_proj"),
    (lambda t: t.__setitem__("model.layers.1.self_attn.extra.weight", torch.zeros(2)),
     "unexpected tensors: model.layers.1.self_attn.extra.weight"),
    (lambda t: t.__setitem__("model.norm.weight", torch.zeros(65)), r"model.norm.weight has shape \[65\]"),
    (lambda t: t.pop("model.layers.1.block_sparse_moe.experts.7.w3.weight"),
     r"model.layers.1.block_sparse_moe.experts.N.w3.weight for N in 0..7: the checkpoint has 7, missing N = \[7\]"),
    (lambda t: t.__setitem__("model.layers.1.block_sparse_moe.experts.8.w1.weight", torch.zeros(32, 64)),
     "experts.8.w1.weight names expert 8, but the config has 8"),
])
def test_load_errors_name_the_tensor(tmp_path, edit, message):
    write_tiny_checkpoint(tmp_path, layers="KM")
    _edit(tmp_path, edit)
    with pytest.raises(WeightLoadError, match=message):
        load_model(tmp_path)


def test_missing_weights_file(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KM")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightLoadError, match="no safetensors weights"):
        load_model(tmp_path)


def test_missing_shard(tmp_path):
    write_tiny_checkpoint(tmp_path, layers="KKM", max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    (tmp_path / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(WeightLoadError, match="is missing"):
        load_model(tmp_path)


def test_peak_memory_while_loading(tmp_path):
    """A ~200 MB checkpoint loads with at most 1.3x its size of extra resident memory.

    A tiny checkpoint is loaded first so that torch's lazily mapped code pages are already resident
    in the baseline; what remains is the memory the weights cost. The peak is VmHWM, which belongs
    to this process's own address space (ru_maxrss would carry over the forking parent's peak).
    """
    warm, big = tmp_path / "warm", tmp_path / "big"
    write_tiny_checkpoint(warm, layers="KM")
    write_tiny_checkpoint(big, layers="KKKM", vocab=50_000, hidden=512, kda_heads=4, kda_dim=128, experts=16)
    size = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    assert size > 150e6
    script = textwrap.dedent(f"""
        import re, resource, torch
        from kimi_swarm.backend import load_model
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
        load_model({str(warm)!r})
        base = rss()
        model = load_model({str(big)!r})
        peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
        print(peak - base)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    assert extra <= 1.3 * size, f"loading took {extra / 1e6:.0f} MB extra for a {size / 1e6:.0f} MB checkpoint"
