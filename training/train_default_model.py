"""Train the embedded default model (dev-only): a small Kimi Linear on the teacher's swarm trajectories.

Uses the project's own model code (kimi_swarm.backend.model: KDA, MLA, MoE layers) through a stateless
full-sequence context, with one swap: the KDA core is fla-core's Triton chunk_kda when it is
installed and matches ours on the GPU at start-up, else kimi_swarm.kernels.kda_reference's `chunk_kda_reference`
(the engine's CPU path: every chunk, row and head at once, one op per chunk in its Python loop). Loss
is on assistant tokens only; bf16 autocast; the MoE router is balanced without an auxiliary loss by
nudging e_score_correction_bias (DeepSeek-V3 style).
Writes an official-format checkpoint (safetensors shards under 16 MiB, with their index).

    python training/trajectories.py --out part1.jsonl.xz --tasks 2000 --shards 4 --seed 1
    python training/train_default_model.py --data part1.jsonl.xz part2.jsonl.xz --out DIR --minutes 8.4
"""

from __future__ import annotations

import argparse
import functools
import json
import lzma
import math
import os
import random
import re
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kimi_swarm.backend.chat.chat_format import IM_USER
from kimi_swarm.backend.model import kda_layer
from kimi_swarm.backend.model.config import KimiLinearConfig
from kimi_swarm.backend.model.model import KimiLinearForCausalLM
from kimi_swarm.backend.model.tokenizer import ByteTokenizer
from kimi_swarm.backend.model.weights import KEEP_FP32, load_model
from kimi_swarm.kernels import chunk_kda as engine_chunk_kda
from kimi_swarm.kernels.kda_reference import chunk_kda_reference

PROCESS_START = time.time()  # the training budget counts from here, so data loading is inside it
BYTE_VOCAB = ByteTokenizer().vocab_size
MAX_SHARD_BYTES = 15 * 1024 * 1024  # the device returns files of at most 16 MiB
USER_TURN = IM_USER + "user"
FIRST_STEPS_LOGGED = 30  # every one of them: the first ~25 steps on the H200 took 300 s for reasons not yet known


def default_config(vocab_size: int = BYTE_VOCAB, hidden: int = 256, layers: int = 12) -> dict:
    """Official-format config.json of the default model: KDA:MLA 3:1, dense layer 0, then MoE + shared expert."""
    special = ByteTokenizer().special_ids
    one_based = range(1, layers + 1)
    return {
        "architectures": ["KimiLinearForCausalLM"], "model_type": "kimi_linear",
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 3 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": hidden // 4,
        "q_lora_rank": None, "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
        "v_head_dim": 32, "mla_use_nope": True, "rope_theta": 10000.0, "rope_scaling": None,
        "model_max_length": 65536, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "linear_attn_config": {"num_heads": 4, "head_dim": 64, "short_conv_kernel_size": 4,
                               "kda_layers": [i for i in one_based if i % 4],
                               "full_attn_layers": [i for i in one_based if i % 4 == 0]},
        "num_experts": 8, "num_experts_per_token": 2, "num_shared_experts": 1,
        "moe_intermediate_size": hidden // 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "moe_router_activation_func": "sigmoid", "moe_renormalize": True, "routed_scaling_factor": 2.446,
        "use_grouped_topk": True, "num_expert_group": 1, "topk_group": 1, "num_nextn_predict_layers": 0,
        "use_cache": True, "initializer_range": 0.02, "dtype": "bfloat16",
        "bos_token_id": special["[BOS]"], "eos_token_id": special["<|im_end|>"], "pad_token_id": special["[PAD]"],
    }


class TrainingContext:
    """ForwardContext for training: whole sequences, optionally continuing one shared prefix.

    Every trajectory starts with the same tool declarations and system prompt, so a batch runs
    that prefix once (batch 1) and its rows continue from the prefix's KDA state, conv window and
    MLA latents, broadcast to the batch; gradients flow back through the broadcast into the prefix.
    """

    def __init__(self, config: KimiLinearConfig, batch: int, device: torch.device,
                 prefix: TrainingContext | None = None):
        self.config, self.batch, self.device, self.prefix = config, batch, device, prefix
        self.slots = torch.arange(batch, device=device)
        self.recurrent: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.latents: dict[int, torch.Tensor] = {}

    def kda_state(self, kda_index: int):
        if kda_index not in self.recurrent:
            if self.prefix is None:
                h, d = self.config.kda_heads, self.config.kda_head_dim
                self.recurrent[kda_index] = torch.zeros(self.batch, h, d, d, device=self.device)
                self.conv[kda_index] = torch.zeros(self.batch, 3 * h * d, self.config.conv_size - 1,
                                                   device=self.device)
            else:
                self.recurrent[kda_index] = self.prefix.recurrent[kda_index].expand(self.batch, -1, -1, -1).clone()
                self.conv[kda_index] = self.prefix.conv[kda_index].expand(self.batch, -1, -1).clone()
        return self.recurrent[kda_index], self.conv[kda_index], self.slots

    def mla_attend(self, mla_index, q_latent, q_pe, latent_new, scale):
        """The model's latent_attention (absorbed MQA form) through SDPA, so memory stays linear in T."""
        n, t, heads, rank = q_latent.shape
        query = torch.cat([q_latent, q_pe.to(q_latent.dtype)], dim=-1).transpose(1, 2)
        keys = latent_new.to(query.dtype)
        mask = None
        if self.prefix is not None:
            before = self.prefix.latents[mla_index].to(query.dtype)
            keys = torch.cat([before.expand(n, -1, -1), keys], dim=1)
            mask = torch.ones(t, keys.shape[1], dtype=torch.bool, device=keys.device).tril(diagonal=before.shape[1])
        self.latents[mla_index] = keys
        key = keys[:, None].expand(-1, heads, -1, -1)
        value = key[..., :rank].contiguous()
        out = F.scaled_dot_product_attention(query, key.contiguous(), value, attn_mask=mask,
                                             is_causal=mask is None, scale=scale)
        return out.transpose(1, 2)


def _forward(model: KimiLinearForCausalLM, ids: torch.Tensor, ctx: TrainingContext) -> torch.Tensor:
    x = model.model.embed_tokens(ids)
    for layer in model.model.layers:
        x = layer(x, ctx)
    return x


def training_logits(model: KimiLinearForCausalLM, ids: torch.Tensor,
                    prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Logits for ids [B, T] continuing `prefix` [P] (shared by every row), without inference_mode."""
    prefix_ctx = None
    if prefix is not None:
        prefix_ctx = TrainingContext(model.config, 1, ids.device)
        _forward(model, prefix[None], prefix_ctx)
    x = _forward(model, ids, TrainingContext(model.config, ids.shape[0], ids.device, prefix_ctx))
    return model.lm_head(model.model.norm(x))


def recomputed(kda_core):
    """The KDA core recomputed in backward: its [chunk, chunk, key] decay tensors are never kept."""
    def run(q, k, v, g, beta, **kwargs):
        return checkpoint(functools.partial(kda_core, **kwargs), q, k, v, g, beta, use_reentrant=False)
    return run


FLA_QKV_DTYPE = torch.bfloat16
"""The dtype of q, k and v in fla's KDA kernels when training on the GPU (bf16 autocast); gates and beta go in fp32."""


def fla_kda_core():
    """fla-core's Triton chunk_kda (fused forward and backward kernels), under our core's contract.

    The Python-loop core is launch-bound on the GPU; fla's kernels are not. Dev-only dependency.
    The batch goes in as one packed row with cu_seqlens: some of fla's kernels autotune per batch
    size, and batches here come in dozens of sizes (the first run spent 5 minutes re-tuning).
    q, k and v go in as bf16 (FLA_QKV_DTYPE), g and beta as fp32, whatever the layer hands over: Triton
    autotunes again for every new set of argument dtypes, and each tuning of fla's KDA kernels costs minutes of
    compiles, so training runs in exactly the dtypes that core_mismatch checked (and tuned) at start-up.
    """
    from fla.ops.kda import chunk_kda as fla_chunk_kda

    def run(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
            use_qk_l2norm=False, **_unused):
        q, k, v = (x.to(FLA_QKV_DTYPE) for x in (q, k, v))
        g, beta = g.float(), beta.float()
        b, t = q.shape[:2]
        cu_seqlens = torch.arange(0, b * t + 1, t, device=q.device, dtype=torch.long)
        o, final = fla_chunk_kda(*(x.flatten(0, 1)[None] for x in (q, k, v, g, beta)), scale=scale,
                                 initial_state=initial_state, output_final_state=output_final_state,
                                 use_qk_l2norm_in_kernel=use_qk_l2norm, cu_seqlens=cu_seqlens)
        return o.view(b, t, *o.shape[2:]), final
    return run


def core_mismatch(core, device: torch.device, seed: int = 0) -> str | None:
    """How `core` differs from chunk_kda_reference in outputs and gradients (None if it agrees to 5e-2).

    Inputs are what the fla core runs on in training: bf16 q/k/v on the GPU (FLA_QKV_DTYPE), fp32 gates, beta
    and initial state.
    """
    gen = torch.Generator().manual_seed(seed)
    b, t, h, d = 2, 150, 4, 64
    low = FLA_QKV_DTYPE if device.type == "cuda" else torch.float32
    inputs = [torch.randn(b, t, h, d, generator=gen).to(low) for _ in range(3)]
    inputs += [-torch.rand(b, t, h, d, generator=gen) * 2, torch.rand(b, t, h, generator=gen),
               torch.randn(b, h, d, d, generator=gen)]
    results = []
    for candidate in (core, chunk_kda_reference):
        leaves = [x.to(device).requires_grad_() for x in inputs]
        out, final = candidate(*leaves[:5], initial_state=leaves[5], output_final_state=True, use_qk_l2norm=True)
        (out.float().square().sum() + final.float().square().sum()).backward()
        results.append([out.detach().float(), final.detach().float()] + [x.grad.float() for x in leaves])
    names = ["output", "final state", "dq", "dk", "dv", "dg", "dbeta", "dstate"]
    for name, got, want in zip(names, *results):
        error = float((got - want).norm() / want.norm().clamp_min(1e-12))
        if not error <= 5e-2:
            return f"{name} relative error {error:.2e}"
    return None


def training_core(name: str, chunk_size: int, device: torch.device):
    """The KDA core to train with: fla's kernels when asked for and they agree with ours, else our own."""
    own = recomputed(functools.partial(chunk_kda_reference, chunk_size=chunk_size))
    if name == "parallel":
        return own
    try:
        core = fla_kda_core()
        problem = core_mismatch(core, device)
    except Exception as error:  # a missing wheel or a kernel that fails on this GPU: train anyway, say so
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        print("KDA core: fla-core chunk_kda (checked against chunk_kda_reference)", flush=True)
        return core
    print(f"KDA core: fla-core unusable ({problem}); using chunk_kda_reference", flush=True)
    return own


def init_weights(model: KimiLinearForCausalLM, seed: int) -> None:
    """GPT-style init; KDA decay and dt in Mamba's ranges; residual outputs scaled by depth."""
    gen = torch.Generator().manual_seed(seed)
    depth_scale = 1 / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(1.0, 16.0, generator=gen).log())
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty(p.shape).uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith("e_score_correction_bias"):
                p.zero_()
            elif p.dim() == 1 or name.endswith("o_norm.weight"):
                p.fill_(1.0)
            elif "conv1d" in name:
                p.copy_(torch.empty(p.shape).uniform_(-0.5, 0.5, generator=gen))
            else:
                std = 0.02 * (depth_scale if name.endswith(("o_proj.weight", "down_proj.weight", "w2")) else 1.0)
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def widened(model: KimiLinearForCausalLM, config: dict, kda_heads: int, mla_heads: int, kv_lora_rank: int,
            seed: int = 0) -> tuple[KimiLinearForCausalLM, dict]:
    """The model with more KDA heads, MLA heads and MLA latent channels, computing the same function.

    Adds attention capacity to a trained checkpoint without starting over: new heads write through zero
    columns of o_proj and new latent channels come from zero rows of kv_a_proj (the latent norm's weight is
    rescaled for the longer mean), so outputs stay the same up to that norm's eps, while every new weight
    gets a gradient once training starts. New heads copy the gates and short convolutions of old ones."""
    old = KimiLinearConfig.from_dict(config)
    if kda_heads < old.kda_heads or mla_heads < old.num_attention_heads or kv_lora_rank < old.kv_lora_rank:
        raise ValueError(f"widening only adds: the checkpoint has {old.kda_heads} KDA heads, "
                         f"{old.num_attention_heads} MLA heads and kv_lora_rank {old.kv_lora_rank}")
    new_config = json.loads(json.dumps(config))
    new_config["linear_attn_config"]["num_heads"] = kda_heads
    new_config["num_attention_heads"] = new_config["num_key_value_heads"] = mla_heads
    new_config["kv_lora_rank"] = kv_lora_rank
    gen = torch.Generator().manual_seed(seed)
    state = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    for layer in old.kda_layer_ids:
        _widen_kda(state, f"model.layers.{layer}.self_attn.", old.kda_heads, kda_heads, old.kda_head_dim, gen)
    for layer in old.mla_layer_ids:
        _widen_mla(state, f"model.layers.{layer}.self_attn.", old, mla_heads, kv_lora_rank, gen)
    grown = KimiLinearForCausalLM(KimiLinearConfig.from_dict(new_config))
    grown.load_state_dict(state)
    return grown.to(next(model.parameters()).device), new_config


def _random_like(weight: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * weight.std()


def _with_random_rows(weight: torch.Tensor, extra: int, gen: torch.Generator) -> torch.Tensor:
    """weight with `extra` more output rows, drawn at its own scale (the inputs of new heads)."""
    return torch.cat([weight, _random_like(weight, (extra, weight.shape[1]), gen)])


def _with_zero_columns(weight: torch.Tensor, extra: int) -> torch.Tensor:
    """weight with `extra` more input columns of zeros (an o_proj reading new heads that add nothing yet)."""
    return torch.cat([weight, weight.new_zeros(weight.shape[0], extra)], dim=1)


def _copied_heads(tensor: torch.Tensor, heads: int, new_heads: int, dim: int = 0) -> torch.Tensor:
    """tensor with its `heads` equal blocks along dim followed by copies of them, cycling, up to new_heads."""
    per_head = tensor.shape[dim] // heads
    extra = torch.arange((new_heads - heads) * per_head) % tensor.shape[dim]
    return torch.cat([tensor, tensor.index_select(dim, extra)], dim=dim)


def _widen_kda(state: dict[str, torch.Tensor], prefix: str, heads: int, new_heads: int, head_dim: int,
               gen: torch.Generator) -> None:
    extra = (new_heads - heads) * head_dim
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight"):
        state[prefix + name] = _with_random_rows(state[prefix + name], extra, gen)
    for name in ("q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight", "f_b_proj.weight", "g_b_proj.weight",
                 "dt_bias", "b_proj.weight"):
        state[prefix + name] = _copied_heads(state[prefix + name], heads, new_heads)
    state[prefix + "A_log"] = _copied_heads(state[prefix + "A_log"], heads, new_heads, dim=2)
    state[prefix + "o_proj.weight"] = _with_zero_columns(state[prefix + "o_proj.weight"], extra)


def _widen_mla(state: dict[str, torch.Tensor], prefix: str, old: KimiLinearConfig, new_heads: int, rank: int,
               gen: torch.Generator) -> None:
    heads, old_rank = old.num_attention_heads, old.kv_lora_rank
    state[prefix + "q_proj.weight"] = _with_random_rows(state[prefix + "q_proj.weight"],
                                                        (new_heads - heads) * old.qk_head_dim, gen)
    kv_a = state[prefix + "kv_a_proj_with_mqa.weight"]
    state[prefix + "kv_a_proj_with_mqa.weight"] = torch.cat(
        [kv_a[:old_rank], kv_a.new_zeros(rank - old_rank, kv_a.shape[1]), kv_a[old_rank:]])
    norm = state[prefix + "kv_a_layernorm.weight"] * math.sqrt(old_rank / rank)
    state[prefix + "kv_a_layernorm.weight"] = torch.cat([norm, norm.mean().expand(rank - old_rank)])
    kv_b = state[prefix + "kv_b_proj.weight"]
    rows = new_heads * (old.qk_nope_head_dim + old.v_head_dim)
    grown = _random_like(kv_b, (rows, rank), gen)
    grown[: kv_b.shape[0], :old_rank] = kv_b
    state[prefix + "kv_b_proj.weight"] = grown
    state[prefix + "o_proj.weight"] = _with_zero_columns(state[prefix + "o_proj.weight"],
                                                         (new_heads - heads) * old.v_head_dim)


class RouterBalancer:
    """Aux-loss-free MoE balancing: raise the bias of under-used experts, lower it for over-used ones."""

    def __init__(self, model: KimiLinearForCausalLM, rate: float = 1e-3):
        self.rate = rate
        self.loads: dict[torch.nn.Module, torch.Tensor] = {}
        for module in model.modules():
            if type(module).__name__ == "Router":
                module.register_forward_hook(self._record)

    def _record(self, module, inputs, outputs) -> None:
        ids = outputs[0]
        counts = torch.bincount(ids.reshape(-1), minlength=module.weight.shape[0]).float()
        self.loads[module] = self.loads.get(module, 0) + counts

    @torch.no_grad()
    def step(self) -> float:
        worst = 0.0
        for router, load in self.loads.items():
            router.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)
            worst = max(worst, float(load.max() / load.mean()))
        self.loads.clear()
        return worst


class NumberSpan(NamedTuple):
    start: int
    end: int
    value: int


class Example(NamedTuple):
    prefix: int
    ids: torch.Tensor
    mask: torch.Tensor
    numbers: list[NumberSpan]


NUMBER = re.compile(rb"(?<![\d.,])(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{2,})(?!\d|[.,]\d)")
"""A number of three or more digits, plain or in thousands (fact values, years, ports), not part of an IP;
digits with a leading zero ("051") are a label, not a value, and a redraw could not keep their width."""


def number_spans(ids: torch.Tensor) -> list[NumberSpan]:
    """Where the numbers are in a trajectory's byte ids (specials, ids >= 256, never match)."""
    raw = torch.where(ids < 256, ids, 0).to(torch.uint8).numpy().tobytes()
    return [NumberSpan(m.start(), m.end(), int(m.group().replace(b",", b""))) for m in NUMBER.finditer(raw)]


def remap_numbers(ids: torch.Tensor, spans: list[NumberSpan], rng: random.Random) -> torch.Tensor:
    """ids with every number replaced by a fresh random one of as many digits, in the same format.

    Trajectories over a fixed web let the model recall a fact's value (or the server's port) instead
    of copying it from the page or the sub-agent's report, and recall fails on held-out entities. A new
    draw every epoch leaves copying as the only way to predict them. The map is consistent (one value,
    one replacement, everywhere in the trajectory) and increasing, so every comparison keeps its answer.
    """
    values_by_digits: dict[int, set[int]] = {}
    for span in spans:
        values_by_digits.setdefault(len(str(span.value)), set()).add(span.value)
    fresh: dict[int, int] = {}
    for digits, values in values_by_digits.items():
        draws = sorted(rng.sample(range(10 ** (digits - 1), 10 ** digits), len(values)))
        fresh.update(zip(sorted(values), draws))
    out = ids.clone()
    for span in spans:
        new = fresh[span.value]
        text = f"{new:,}" if span.end - span.start > len(str(new)) else str(new)
        out[span.start:span.end] = torch.tensor(list(text.encode("ascii")), dtype=out.dtype)
    return out


TokenizedTrajectory = tuple[int, str, np.ndarray, np.ndarray]
"""(prefix index, role, ids, target mask)."""


def read_trajectories(file: Path, max_len: int) -> tuple[list[str], list[TokenizedTrajectory], int]:
    """One file's trajectories, tokenized (a worker process reads each file): the shared prefixes (text
    before the first user turn), per trajectory (prefix index, role, ids, target mask), and how many were
    dropped for being longer than max_len."""
    tokenizer = ByteTokenizer()
    heads: dict[str, int] = {}
    records, dropped = [], 0
    with lzma.open(file, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            segments = record["segments"]
            head, cut, rest = segments[0][0].partition(USER_TURN)
            if not cut or segments[0][1]:
                raise ValueError(f"a trajectory in {file} does not start with context up to a user turn")
            ids: list[int] = []
            mask: list[bool] = []
            for text, target in [[cut + rest, False], *segments[1:]]:
                piece = tokenizer.encode(text)
                ids.extend(piece)
                mask.extend([bool(target)] * len(piece))
            if len(ids) > max_len:
                dropped += 1
                continue
            records.append((heads.setdefault(head, len(heads)), record["role"], np.array(ids, dtype=np.int16),
                            np.array(mask, dtype=np.bool_)))
    return list(heads), records, dropped


def load_examples(paths: list[Path], tokenizer: ByteTokenizer, max_len: int,
                  orchestrator_repeats: int = 1) -> tuple[list[torch.Tensor], list[Example]]:
    """Shared prefixes and, per trajectory, its prefix index, the remaining ids and the target mask;
    files are read in parallel (on the GPU machine this took minutes of its time, one file after another).

    Orchestrator trajectories are listed `orchestrator_repeats` times: their synthesis, copying every
    sub-agent's value into one answer, is where the model fails, and with numbers redrawn per batch row
    each repeat is a fresh copying exercise."""
    prefixes: dict[str, int] = {}
    examples, dropped = [], 0
    with ProcessPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        for heads, records, file_dropped in pool.map(read_trajectories, paths, [max_len] * len(paths)):
            dropped += file_dropped
            for head_index, role, ids, mask in records:
                ids_tensor = torch.from_numpy(ids)
                example = Example(prefixes.setdefault(heads[head_index], len(prefixes)), ids_tensor,
                                  torch.from_numpy(mask), number_spans(ids_tensor))
                examples.extend([example] * (orchestrator_repeats if role == "orchestrator" else 1))
    prefix_ids = [torch.tensor(tokenizer.encode(head)) for head in prefixes]
    print(f"loaded {len(examples)} trajectories, repeats included ({sum(len(e.ids) for e in examples):,} tokens after "
          f"{len(prefix_ids)} shared prefixes of {[len(p) for p in prefix_ids]} tokens), "
          f"dropped {dropped} longer than {max_len}", flush=True)
    return prefix_ids, examples


def make_batches(examples: list[Example], tokens_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Batches of one prefix each, length-sorted, padded to a multiple of 256, at most tokens_per_batch."""
    order = sorted(range(len(examples)), key=lambda i: (examples[i].prefix, len(examples[i].ids), rng.random()))
    batches, current, width = [], [], 0
    for i in order:
        length = -(-len(examples[i].ids) // 256) * 256
        rows, w = len(current) + 1, max(width, length)
        if current and (w * rows > tokens_per_batch or examples[current[0]].prefix != examples[i].prefix):
            batches.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], batch: list[int], pad_id: int, device,
            remap: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and target mask of a batch; with `remap`, numbers are redrawn (remap_numbers)."""
    width = -(-max(len(examples[i].ids) for i in batch) // 256) * 256
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, i in enumerate(batch):
        example = examples[i]
        row_ids = remap_numbers(example.ids, example.numbers, remap) if remap else example.ids
        ids[row, : len(example.ids)] = row_ids.long()
        mask[row, : len(example.ids)] = example.mask
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def official_state_dict(model: KimiLinearForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under the official checkpoint's names: per-expert w1/w2/w3, dense layer 0 as mlp.*."""
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        keep_fp32 = name.endswith(KEEP_FP32)
        tensor = tensor.float() if keep_fp32 else tensor.to(torch.bfloat16)
        if ".block_sparse_moe.experts." in name:
            prefix, which = name.rsplit(".", 1)
            for expert in range(tensor.shape[0]):
                parts = zip(("w1", "w3"), tensor[expert].chunk(2)) if which == "w13" else [(which, tensor[expert])]
                for part, weight in parts:
                    out[f"{prefix}.{expert}.{part}.weight"] = weight.contiguous()
        else:
            out[name] = tensor.contiguous()
    return out


def save_checkpoint(model: KimiLinearForCausalLM, config: dict, out: Path) -> None:
    """config.json, tokenizer_config.json and safetensors shards of at most MAX_SHARD_BYTES, with an index.

    Written beside `out` and moved into place when complete: a run killed mid-save (the device's time
    limit) leaves the previous checkpoint whole, or the new one whole under `<out>.saving`."""
    from safetensors.torch import save_file

    final, out = out, out.with_name(out.name + ".saving")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ByteTokenizer().save(out)
    tensors = official_state_dict(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)


def assistant_loss(model: KimiLinearForCausalLM, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                   device: torch.device, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ids [B, T] after their shared prefix, on the tokens mask marks (the
    assistant's); bf16 autocast on the GPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = training_logits(model, ids, prefix)
    targets = mask[:, 1:]
    return F.cross_entropy(logits[:, :-1][targets].float(), ids[:, 1:][targets], reduction=reduction)


@torch.no_grad()
def validation_loss(model: KimiLinearForCausalLM, prefixes: list[torch.Tensor], examples: list[Example],
                    device: torch.device) -> float:
    """Loss per assistant byte on held-out trajectories (names the model never saw): whether it copies
    from its context rather than recalls training names. One trajectory at a time, in eval mode without
    gradients, through the engine's own KDA kernel, which has no autotuning: fla's kernels tune at their first
    call for each new key and set of argument dtypes, minutes of compiles on the GPU."""
    model.eval()
    training_core, kda_layer.chunk_kda = kda_layer.chunk_kda, engine_chunk_kda
    total, count = 0.0, 0
    try:
        for example in examples:
            ids, mask = example.ids.long()[None].to(device), example.mask[None].to(device)
            total += float(assistant_loss(model, prefixes[example.prefix].to(device), ids, mask, device, "sum"))
            count += int(mask[:, 1:].sum())
    finally:
        kda_layer.chunk_kda = training_core
        model.train()
    return total / max(count, 1)


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer = ByteTokenizer()
    if args.init:
        config_dict = json.loads((Path(args.init) / "config.json").read_text())
        model = load_model(args.init, device=device, dtype=torch.float32)
        print(f"continuing from {args.init}", flush=True)
        if args.widen:
            model, config_dict = widened(model, config_dict, *args.widen, seed=args.seed)
            print(f"widened to {args.widen[0]} KDA heads, {args.widen[1]} MLA heads, kv_lora_rank {args.widen[2]}",
                  flush=True)
        model.requires_grad_(True)
    else:
        config_dict = default_config(hidden=args.hidden, layers=args.layers)
        model = KimiLinearForCausalLM(KimiLinearConfig.from_dict(config_dict))
        init_weights(model, args.seed)
    model.to(device).train()
    kda_layer.chunk_kda = training_core(args.kda_core, args.chunk_size, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters", flush=True)
    validation = load_examples([Path(p) for p in args.validation], tokenizer, args.max_len) if args.validation else None
    if validation:
        print(f"validation loss before: {validation_loss(model, *validation, device):.4f}", flush=True)
    if args.eval_only:
        return
    prefixes, examples = load_examples([Path(p) for p in args.data], tokenizer, args.max_len,
                                       args.orchestrator_repeats)
    balancer = RouterBalancer(model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n]
    no_decay = [p for n, p in model.named_parameters()
                if (p.dim() < 2 or "conv1d" in n) and not n.endswith("e_score_correction_bias")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    budget = args.minutes * 60 - (time.time() - PROCESS_START)
    start = time.time()
    step, epoch, last_save, skipped, tokens = 0, 0, start, 0, 0
    step_seconds: list[float] = []
    pad = tokenizer.special_ids["[PAD]"]
    tokens_per_batch = args.tokens_per_batch
    done = False
    while not done:
        epoch += 1
        for batch in make_batches(examples, tokens_per_batch, rng):
            elapsed = time.time() - start
            typical_step = statistics.median(step_seconds[-10:]) if step_seconds else 0.0
            if elapsed + typical_step > budget:  # stop before a step that would overrun, not after it
                done = True
                break
            progress = elapsed / budget
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, mask = collate(examples, batch, pad, device, rng if args.remap_numbers else None)
            try:
                prefix = prefixes[examples[batch[0]].prefix].to(device)
                loss, grad_norm = train_step(model, optimizer, prefix, ids, mask, device)
            except torch.cuda.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                skipped += 1
                tokens_per_batch //= 2
                print(f"out of memory on batch {tuple(ids.shape)}; batches now hold {tokens_per_batch} tokens",
                      flush=True)
                break  # rebuild the batches with the smaller budget
            imbalance = balancer.step()
            step_seconds.append(time.time() - start - elapsed)
            step += 1
            tokens += ids.numel()
            if step % args.log_every == 0 or step <= FIRST_STEPS_LOGGED:
                print(f"step {step} epoch {epoch} t={elapsed:.0f}s {tokens / max(elapsed, 1e-9):,.0f} tok/s "
                      f"loss {loss:.4f} lr {lr:.2e} "
                      f"grad {grad_norm:.2f} batch {tuple(ids.shape)} max-load/mean {imbalance:.2f}", flush=True)
            if time.time() - last_save > args.save_every:
                save_checkpoint(model, config_dict, Path(args.out))
                last_save = time.time()
    save_checkpoint(model, config_dict, Path(args.out))
    if validation:
        print(f"validation loss after: {validation_loss(model, *validation, device):.4f}", flush=True)
    print(f"done: {step} steps, {epoch} epochs, {tokens:,} padded tokens, {skipped} batches skipped, "
          f"{time.time() - start:.0f}s of training, {time.time() - PROCESS_START:.0f}s in all, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else 0:.1f} GiB on the GPU; "
          f"checkpoint in {args.out}", flush=True)


def train_step(model, optimizer, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               device: torch.device) -> tuple[float, float]:
    """One optimizer step on a padded batch after its shared prefix; loss only on assistant tokens."""
    loss = assistant_loss(model, prefix, ids, mask, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item(), float(grad_norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+",
                        help="trajectory files (.jsonl.xz) written by training/trajectories.py")
    parser.add_argument("--out", help="checkpoint directory to write (required unless --eval-only)")
    parser.add_argument("--validation", nargs="+", help="held-out trajectories (trajectories --split heldout): "
                                                        "their loss is printed before and after training")
    parser.add_argument("--eval-only", action="store_true", help="print the validation loss of --init and stop")
    parser.add_argument("--minutes", type=float, default=6.5,
                        help="wall-clock budget from process start, data loading included")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", help="checkpoint to continue training from (its config wins over --hidden/--layers)")
    parser.add_argument("--widen", type=int, nargs=3, metavar=("KDA_HEADS", "MLA_HEADS", "KV_LORA_RANK"),
                        help="with --init: first give the checkpoint this many heads and latent channels, same outputs")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tokens-per-batch", type=int, default=131072,
                        help="a step costs about the same up to here (launch-bound); peak was 17 GiB at 32k, chunk 32")
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--remap-numbers", action=argparse.BooleanOptionalAction, default=True,
                        help="redraw every number of 3+ digits in each training trajectory (see remap_numbers)")
    parser.add_argument("--orchestrator-repeats", type=int, default=1,
                        help="times each orchestrator trajectory is listed per epoch (see load_examples)")
    parser.add_argument("--chunk-size", type=int, default=64, help="KDA chunk length of chunk_kda_reference")
    parser.add_argument("--kda-core", choices=["fla", "parallel"], default="fla",
                        help="fla: fla-core's Triton kernels if installed and they match ours; parallel: our own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoint saves")
    args = parser.parse_args()
    if args.eval_only and not (args.init and args.validation):
        parser.error("--eval-only needs --init (the checkpoint) and --validation (the trajectories)")
    if args.widen and not args.init:
        parser.error("--widen needs --init (the checkpoint to widen)")
    if not args.eval_only and not (args.data and args.out):
        parser.error("training needs --data and --out")
    train(args)


if __name__ == "__main__":
    main()
