"""Where a forward pass keeps per-sequence state: the interface between the model and its caches.

The model never owns state. A forward over N sequences of T new tokens asks its context for
the KDA state rows of those sequences (fp32 recurrent state [H, K, V] and the pre-conv window
of the last kernel-1 tokens) and hands each MLA layer's new latent to the context, which stores
it and attends over everything the sequence has cached. The engine's paged context and the
plain `DenseContext` below implement the same two methods.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from .config import KimiLinearConfig


class CachedLatents(NamedTuple):
    """A prefill chunk's keys: rows every sequence of the batch shares (attended once for all of them) and
    each sequence's own rows after those, ending with its new tokens."""

    shared: torch.Tensor | None  # [S, R+P]
    private: list[torch.Tensor]  # per sequence [start + T - S, R+P]


class ForwardContext(Protocol):
    def kda_state(self, kda_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recurrent pool [S, H, K, V] fp32, conv pool [S, 3*H*K, kernel-1], slots [N]) for one KDA layer."""

    def mla_attend(self, mla_index: int, q_latent: torch.Tensor, q_pe: torch.Tensor,
                   latent_new: torch.Tensor, scale: float) -> torch.Tensor:
        """Store latent_new [N, T, R+P] and attend (causally) over the sequences' whole cache.

        q_latent [N, T, H, R] and q_pe [N, T, H, P] are the absorbed queries; returns [N, T, H, R].
        """


def latent_attention(q_latent: torch.Tensor, q_pe: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Absorbed MLA (MQA form) for N sequences with equal cache length S, the last T of them new.

    keys [N, S, R+P]: rows are [normed latent c ; k_pe]. Query t sits at position S-T+t and sees
    keys up to and including itself.
    """
    n, t, h, r = q_latent.shape
    s = keys.shape[1]
    c, k_pe = keys[..., :r], keys[..., r:]
    scores = torch.einsum("nthr,nsr->nhts", q_latent, c) + torch.einsum("nthp,nsp->nhts", q_pe, k_pe)
    scores = scores.float() * scale
    if t > 1:
        query_pos = torch.arange(s - t, s, device=keys.device)[:, None]
        key_pos = torch.arange(s, device=keys.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    probs = scores.softmax(dim=-1).to(c.dtype)
    return torch.einsum("nhts,nsr->nthr", probs, c)


class DenseContext:
    """Contiguous per-batch state for N sequences that advance together (tests, full-sequence calls)."""

    def __init__(self, config: KimiLinearConfig, batch: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        h, d = config.kda_heads, config.kda_head_dim
        n_kda = len(config.kda_layer_ids)
        self.recurrent = [torch.zeros(batch, h, d, d, device=device, dtype=torch.float32) for _ in range(n_kda)]
        self.conv = [torch.zeros(batch, 3 * h * d, config.conv_size - 1, device=device, dtype=dtype)
                     for _ in range(n_kda)]
        self.slots = torch.arange(batch, device=device)
        self.latents: list[torch.Tensor | None] = [None] * len(config.mla_layer_ids)

    def kda_state(self, kda_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.recurrent[kda_index], self.conv[kda_index], self.slots

    def mla_attend(self, mla_index: int, q_latent: torch.Tensor, q_pe: torch.Tensor,
                   latent_new: torch.Tensor, scale: float) -> torch.Tensor:
        old = self.latents[mla_index]
        keys = latent_new if old is None else torch.cat([old, latent_new], dim=1)
        self.latents[mla_index] = keys
        return latent_attention(q_latent, q_pe, keys, scale)
