"""One generate request's progress: accepting sampled tokens, stop conditions, text and deltas."""

from __future__ import annotations

import torch

from ..model.tokenizer import StreamDecoder, Tokenizer
from .sampling import Completion, FinishReason, SamplingParams, new_generator, sample_row


class Generation:
    def __init__(self, params: SamplingParams, tokenizer: Tokenizer | None, stop_ids: list[int],
                 device: torch.device):
        if params.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this engine has none (pass stop_token_ids)")
        self.params = params
        self.stop_ids = set(params.stop_token_ids if params.stop_token_ids is not None else stop_ids)
        self.generator = new_generator(params, device)
        self.decoder = StreamDecoder(tokenizer) if tokenizer is not None else None
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: FinishReason | None = None
        self._hold = max((len(s) for s in params.stop), default=1) - 1

    @property
    def greedy(self) -> bool:
        """Greedy rows take the batch's argmax, computed on the device; only sampled rows need their logits."""
        return self.params.temperature == 0.0

    def sample(self, logits: torch.Tensor) -> int:
        return sample_row(logits, self.params, self.generator)

    def accept(self, token: int) -> None:
        """Record a sampled token and decide whether generation ends here."""
        self.token_ids.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            if self.decoder is not None:
                self.text += self.decoder.flush()
            return
        if self.decoder is not None:
            self.text += self.decoder.push(token)
            for stop in self.params.stop:
                cut = self.text.find(stop, max(0, self.emitted - len(stop)))
                if cut != -1:
                    self.text = self.text[:cut]
                    self.finish_reason = "stop"
                    return
        if len(self.token_ids) >= self.params.max_tokens:
            self.finish_reason = "length"
            if self.decoder is not None:
                self.text += self.decoder.flush()

    def take_delta(self) -> str:
        """New text safe to show: all of it once finished, else all but what could start a stop string."""
        end = len(self.text) if self.finish_reason else max(self.emitted, len(self.text) - self._hold)
        delta, self.emitted = self.text[self.emitted:end], end
        return delta

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        return Completion(text=self.text, token_ids=list(self.token_ids), finish_reason=self.finish_reason)
