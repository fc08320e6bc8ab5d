"""Train the embedded default model (dev-only): a small Kimi Linear on the teacher's swarm trajectories.

Uses the project's own model code (backend.model: KDA, MLA, MoE layers) through a stateless
full-sequence context, with one swap: the KDA core is `chunk_kda_parallel`, the same chunked
UT-transform math as kernels.kda_reference but vectorised over chunks so autograd stays fast
(tests/test_default_model.py checks it against the reference). Loss is on assistant tokens only;
bf16 autocast; the MoE router is balanced without an auxiliary loss by nudging
e_score_correction_bias (DeepSeek-V3 style). Writes an official-format checkpoint.

    python scripts/train_default_model.py --data trajectories.jsonl.xz --out DIR --minutes 6.5
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backend.kda_layer  # noqa: E402
from backend.config import KimiLinearConfig  # noqa: E402
from backend.model import KimiLinearForCausalLM  # noqa: E402
from backend.context import latent_attention  # noqa: E402
from backend.tokenizer import ByteTokenizer  # noqa: E402
from kernels.kda_reference import l2norm  # noqa: E402

BYTE_VOCAB = ByteTokenizer().vocab_size
MAX_SHARD_BYTES = 15 * 1024 * 1024  # the device returns files of at most 16 MiB


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
                               "kda_layers": [i for i in one_based if i % 4], "full_attn_layers": [i for i in one_based if i % 4 == 0]},
        "num_experts": 8, "num_experts_per_token": 2, "num_shared_experts": 1,
        "moe_intermediate_size": 3 * hidden // 4, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "moe_router_activation_func": "sigmoid", "moe_renormalize": True, "routed_scaling_factor": 2.446,
        "use_grouped_topk": True, "num_expert_group": 1, "topk_group": 1, "num_nextn_predict_layers": 0,
        "use_cache": True, "initializer_range": 0.02, "dtype": "bfloat16",
        "bos_token_id": special["[BOS]"], "eos_token_id": special["<|im_end|>"], "pad_token_id": special["[PAD]"],
    }


def chunk_kda_parallel(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                       use_qk_l2norm=False, chunk_size=32, **_unused):
    """kernels.kda_reference.chunk_kda_reference for equal-length batches, vectorised over chunks.

    Only the inter-chunk state update is a Python loop (a few matmuls per chunk); everything
    inside a chunk is computed for all chunks at once.
    """
    in_dtype = q.dtype
    b, t, h, kd = k.shape
    vd = v.shape[-1]
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * (kd ** -0.5 if scale is None else scale)
    c = chunk_size
    pad = (-t) % c
    if pad:  # zero keys/values/beta and zero log-decay leave the state untouched
        q, k, v, g = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    n = (t + pad) // c

    def chunks(x):
        return x.view(b, n, c, h, -1).permute(0, 3, 1, 2, 4)

    q, k, v, g = (chunks(x) for x in (q, k, v, g))
    beta = beta.view(b, n, c, h).permute(0, 3, 1, 2)
    gc = g.cumsum(dim=-2)
    lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    decay = (gc[..., :, None, :] - gc[..., None, :, :]).masked_fill(~lower[..., None], float("-inf")).exp()
    a_kk = ((k[..., :, None, :] * k[..., None, :, :]) * decay).sum(-1) * beta[..., None]
    a_kk = a_kk.masked_fill(~lower | torch.eye(c, dtype=torch.bool, device=q.device), 0.0)
    a_qk = ((q[..., :, None, :] * k[..., None, :, :]) * decay).sum(-1)
    unit_lower = a_kk + torch.eye(c, device=q.device)
    rhs = torch.cat([v * beta[..., None], k * beta[..., None] * gc.exp()], dim=-1)
    u, w = torch.linalg.solve_triangular(unit_lower, rhs, upper=False, unitriangular=True).split([vd, kd], dim=-1)
    q_decayed = q * gc.exp()
    g_last = gc[..., -1, :]
    k_to_end = (k * (g_last[..., None, :] - gc).exp()).transpose(-1, -2)
    state = (torch.zeros(b, h, kd, vd, device=q.device) if initial_state is None
             else initial_state.float().clone())
    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ state
        outs.append(q_decayed[:, :, i] @ state + a_qk[:, :, i] @ v_new)
        state = state * g_last[:, :, i].exp()[..., None] + k_to_end[:, :, i] @ v_new
    o = torch.stack(outs, dim=2).permute(0, 2, 3, 1, 4).reshape(b, n * c, h, vd)[:, :t]
    return o.to(in_dtype), (state if output_final_state else None)


class TrainingContext:
    """ForwardContext for whole sequences from position 0: fresh zero state, attention over the call's tokens.

    Holds nothing between calls, so a layer can be recomputed (activation checkpointing) safely.
    """

    def __init__(self, config: KimiLinearConfig, batch: int, device: torch.device):
        self.config, self.batch, self.device = config, batch, device
        self.slots = torch.arange(batch, device=device)

    def kda_state(self, kda_index: int):
        h, d = self.config.kda_heads, self.config.kda_head_dim
        recurrent = torch.zeros(self.batch, h, d, d, device=self.device)
        conv = torch.zeros(self.batch, 3 * h * d, self.config.conv_size - 1, device=self.device)
        return recurrent, conv, self.slots

    def mla_attend(self, mla_index, q_latent, q_pe, latent_new, scale):
        return latent_attention(q_latent, q_pe, latent_new, scale)


def training_logits(model: KimiLinearForCausalLM, ids: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """The model's forward without inference_mode, each decoder layer optionally recomputed in backward."""
    ctx = TrainingContext(model.config, ids.shape[0], ids.device)
    x = model.model.embed_tokens(ids)
    for layer in model.model.layers:
        x = checkpoint(layer, x, ctx, use_reentrant=False) if use_checkpoint else layer(x, ctx)
    return model.lm_head(model.model.norm(x))


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


def load_examples(path: Path, tokenizer: ByteTokenizer, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, target mask) per trajectory; segments are [text, is_assistant_output] pairs."""
    examples, dropped = [], 0
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            ids: list[int] = []
            mask: list[bool] = []
            for text, target in json.loads(line)["segments"]:
                piece = tokenizer.encode(text)
                ids.extend(piece)
                mask.extend([bool(target)] * len(piece))
            if len(ids) > max_len:
                dropped += 1
                continue
            examples.append((torch.tensor(ids, dtype=torch.int16), torch.tensor(mask)))
    print(f"loaded {len(examples)} trajectories ({sum(len(i) for i, _ in examples):,} tokens), "
          f"dropped {dropped} longer than {max_len}", flush=True)
    return examples


def make_batches(examples, tokens_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Length-sorted batches padded to a multiple of 256, each at most tokens_per_batch padded tokens."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches, current, width = [], [], 0
    for i in order:
        length = -(-len(examples[i][0]) // 256) * 256
        if current and max(width, length) * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples, batch: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = -(-max(len(examples[i][0]) for i in batch) // 256) * 256
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, i in enumerate(batch):
        tokens, target = examples[i]
        ids[row, : len(tokens)] = tokens.long()
        mask[row, : len(tokens)] = target
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def official_state_dict(model: KimiLinearForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under the official checkpoint's names: per-expert w1/w2/w3, dense layer 0 as mlp.*."""
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        keep_fp32 = name.endswith(("A_log", "dt_bias", "e_score_correction_bias"))
        tensor = tensor.float() if keep_fp32 else tensor.to(torch.bfloat16)
        if ".block_sparse_moe.experts." in name:
            prefix, which = name.rsplit(".", 1)
            for expert in range(tensor.shape[0]):
                out[f"{prefix}.{expert}.{which}.weight"] = tensor[expert].contiguous()
        else:
            out[name] = tensor.contiguous()
    return out


def save_checkpoint(model: KimiLinearForCausalLM, config: dict, out: Path) -> None:
    """config.json, tokenizer_config.json and safetensors shards of at most MAX_SHARD_BYTES, with an index."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
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


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backend.kda_layer.chunk_kda = chunk_kda_parallel
    tokenizer = ByteTokenizer()
    config_dict = default_config(hidden=args.hidden, layers=args.layers)
    config = KimiLinearConfig.from_dict(config_dict)
    model = KimiLinearForCausalLM(config)
    init_weights(model, args.seed)
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters", flush=True)
    examples = load_examples(Path(args.data), tokenizer, args.max_len)
    balancer = RouterBalancer(model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n]
    no_decay = [p for n, p in model.named_parameters()
                if (p.dim() < 2 or "conv1d" in n) and not n.endswith("e_score_correction_bias")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    budget = args.minutes * 60
    start = time.time()
    step, epoch, last_save = 0, 0, start
    pad = tokenizer.special_ids["[PAD]"]
    tokens_per_batch = args.tokens_per_batch
    done = False
    while not done:
        epoch += 1
        for batch in make_batches(examples, tokens_per_batch, rng):
            elapsed = time.time() - start
            if elapsed > budget:
                done = True
                break
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, mask = collate(examples, batch, pad, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = training_logits(model, ids, use_checkpoint=device.type == "cuda")
            targets = mask[:, 1:]
            loss = F.cross_entropy(logits[:, :-1][targets].float(), ids[:, 1:][targets])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            imbalance = balancer.step()
            step += 1
            if step % args.log_every == 0 or step == 1:
                print(f"step {step} epoch {epoch} t={elapsed:.0f}s loss {loss.item():.4f} lr {lr:.2e} "
                      f"grad {grad_norm:.2f} batch {tuple(ids.shape)} max-load/mean {imbalance:.2f}", flush=True)
            if time.time() - last_save > args.save_every:
                save_checkpoint(model, config_dict, Path(args.out))
                last_save = time.time()
    save_checkpoint(model, config_dict, Path(args.out))
    print(f"done: {step} steps, {epoch} epochs, {time.time() - start:.0f}s; checkpoint in {args.out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="trajectories .jsonl.xz written by swarm.offline_web.trajectories")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--minutes", type=float, default=6.5, help="wall-clock training budget")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tokens-per-batch", type=int, default=65536)
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoint saves")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
