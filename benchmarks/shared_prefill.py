"""Forks' suffix prefill against a long shared prefix: one MLA layer, shared-prefix mode against per-fork.

Per fork, the expanded form decompresses the whole cached latent through kv_b_proj before attending;
in shared-prefix mode the prefix is decompressed once and all forks' queries attend it in one flash
call, merged with each fork's own keys by log-sum-exp. Checks the two modes against each other and
the CUDA attention_with_lse against a float64 reference, then times both modes.

    python benchmarks/shared_prefill.py                       # 48B layer, 128K prefix, 32 forks x 512 tokens
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import cuda_event_median_ms

from kimi_swarm.backend.model.attention import attention_with_lse
from kimi_swarm.backend.model.context import CachedLatents
from kimi_swarm.backend.model.mla_layer import KimiMLAAttention
from kimi_swarm.backend.model.presets import preset_config, randomize_

FLOAT64_CHECK_TOLERANCE = 2e-2  # bf16 inputs and outputs against a float64 reference


def check_attention_with_lse(device: torch.device, gen: torch.Generator) -> tuple[float, float]:
    """Relative error of the flash path's output and lse against float64, on fresh random inputs."""
    q, k, v = (torch.randn(*shape, device=device, generator=gen) for shape in [(300, 8, 192), (2000, 8, 192),
                                                                                (2000, 8, 192)])
    out, lse = attention_with_lse(*(x.bfloat16() for x in (q, k, v)), 192 ** -0.5)
    want, want_lse = attention_with_lse(*(x.bfloat16().double() for x in (q, k, v)), 192 ** -0.5)
    return (float((out.double() - want).norm() / want.norm()),
            float((lse.double() - want_lse).abs().max() / want_lse.abs().max()))


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="48b")
    parser.add_argument("--prefix", type=int, default=131072)
    parser.add_argument("--forks", type=int, default=32,
                        help="forks per prefill chunk (16384 / 512 in benchmarks/e2e.py)")
    parser.add_argument("--suffix", type=int, default=512)
    parser.add_argument("--own", type=int, default=40, help="each fork's cached rows after the shared pages")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/shared_prefill.py times CUDA kernels; run it on a GPU")
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    out_error, lse_error = check_attention_with_lse(device, gen)
    print(f"attention_with_lse vs float64: output {out_error:.2e}, lse {lse_error:.2e}")

    config = preset_config(args.preset)
    layer = KimiMLAAttention(config, 0).to(device, torch.bfloat16)
    randomize_(layer, gen)
    width = config.kv_lora_rank + config.qk_rope_head_dim
    shared = torch.randn(args.prefix, width, device=device, generator=gen).bfloat16()
    own = [torch.randn(args.own + args.suffix, width, device=device, generator=gen).bfloat16()
           for _ in range(args.forks)]
    q = torch.randn(args.forks, args.suffix, config.num_attention_heads, config.qk_head_dim, device=device,
                    generator=gen).bfloat16()
    together = CachedLatents(shared, own)

    def per_fork() -> torch.Tensor:
        return layer._attend_expanded(q, CachedLatents(None, [torch.cat([shared, rows]) for rows in own]))

    def shared_once() -> torch.Tensor:
        return layer._attend_expanded(q, together)

    a, b = per_fork(), shared_once()
    mismatch = float((a.float() - b.float()).norm() / a.float().norm())
    print(f"shared-prefix vs per-fork output: relative difference {mismatch:.2e}")
    if not mismatch < FLOAT64_CHECK_TOLERANCE or not out_error < FLOAT64_CHECK_TOLERANCE:
        sys.exit("shared-prefix prefill disagrees; not timing it")
    ms_per_fork, ms_shared = (cuda_event_median_ms(fn, args.repeats) for fn in (per_fork, shared_once))
    heads, nope = config.num_attention_heads, config.qk_nope_head_dim
    rope, v = config.qk_rope_head_dim, config.v_head_dim
    attend = 2 * args.forks * args.suffix * (args.prefix + args.own) * heads * (nope + rope + v)
    decompress = 2 * (args.prefix + args.own) * config.kv_lora_rank * heads * (nope + v)
    shape = f"{args.forks} forks x {args.suffix} tokens, {args.prefix:,}-token prefix, one layer"
    print(f"\n| mode ({shape}) | ms | TFLOP/s |")
    print("|---|---|---|")
    print(f"| per fork (prefix decompressed {args.forks}x) | {ms_per_fork:.1f} | "
          f"{(attend + args.forks * decompress) / ms_per_fork / 1e9:.0f} |")
    print(f"| shared prefix once | {ms_shared:.1f} | {(attend + decompress) / ms_shared / 1e9:.0f} |")
    print(f"| speed-up | {ms_per_fork / ms_shared:.2f}x | |")


if __name__ == "__main__":
    main()
