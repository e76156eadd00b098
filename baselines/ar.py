"""Autoregressive transformer (spec 4): causal attention in natural order, exact NLL,
KV-cached sampling. ``adaln=True`` gives "AR + AdaLN" (Table 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from esolm.backbone import Backbone, in_inference_mode
from esolm.config import ModelConfig
from esolm.diffusion import ones_like_valid, target_logprob
from esolm.interface import NLL, Capabilities, Clock, Display, LanguageModel, LossOutput, SampleOutput
from esolm.sampling import sample_categorical


@dataclass
class ARConfig(ModelConfig):
    """AR: the backbone with causal attention; no AdaLN unless ``adaln=True``."""

    adaln: bool = False


class AR(LanguageModel):
    config_class = ARConfig
    capabilities = Capabilities(kv_cache=True, exact_likelihood=True, single_pass_likelihood=True,
                                next_token_scoring=True, nfe_equals_l=dict(steps=1),  # L - 1 calls whatever steps says
                                conditioning=("prefix",))  # no right context: no infill (spec 15.4.1)

    @classmethod
    def display(cls, config: ARConfig) -> Display:
        if config.adaln:
            return Display("AR", "AR + AdaLN", "#666666", marker="*", order=1, reference=True)
        return Display("AR", "AR", "#222222", marker="*", order=0, reference=True)

    def __init__(self, config: ARConfig):
        super().__init__(config)
        self.backbone = Backbone(config)

    def _next_token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p(x_{i+1} | x_{<=i}) [B, n - 1] for any n <= config.length (spec 4.2)."""
        n = tokens.shape[1]
        logits = self.backbone(tokens[:, :-1], torch.arange(n - 1, device=tokens.device), "causal")
        return target_logprob(logits, tokens[:, 1:])

    @in_inference_mode
    def next_token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same without autograd, for scoring text (a gen-PPL evaluator)."""
        return self._next_token_logprobs(tokens)

    def _token_nll(self, tokens):
        """-log p(x_{i+1} | x_{<=i}) for the L - 1 next-token predictions (spec 4.2)."""
        return -self._next_token_logprobs(tokens)

    def loss(self, tokens, valid=None) -> LossOutput:
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)[:, 1:]
        nll = self._token_nll(tokens) * valid
        n = valid.sum()
        return LossOutput(loss=nll.sum() / n, nll_sum=nll.sum().detach(), num_tokens=n)

    @in_inference_mode
    def nll(self, tokens, *, exact=False, valid=None, **opts) -> NLL:
        """Exact NLL (the AR likelihood is exact whatever ``exact`` says)."""
        self.check_tokens(tokens)
        valid = ones_like_valid(tokens, valid)[:, 1:]
        nll = (self._token_nll(tokens) * valid).double().sum(1)
        return NLL(per_sequence=nll, num_tokens=valid.sum(1))

    @in_inference_mode
    def generate(self, num_samples, options, *, generator=None, profile=False, given=None) -> SampleOutput:
        """Left to right from BOS: L - 1 network calls (``steps`` is ignored: NFE = L - 1).

        ``given`` (a prompt, spec 15.4.1): g = the shortest row's prompt length (at least the BOS);
        one prefill pass over positions [0, g) fills the cache and predicts position g, then one
        call per position: NFE = L - g. A row whose prompt is longer keeps its given tokens where
        the others draw (its draws there are discarded), so a batch may mix prompt lengths; the
        cache holds the given tokens, so it stays exact."""
        length, top_p = self.sample_length(options), options.top_p
        dev = self.device
        x = torch.full((num_samples, length), self.config.bos_id, dtype=torch.long, device=dev)
        g = 1
        if given is not None:
            x, g = given.place(x), max(1, int(given.prefixes().min()))
        clock = Clock(dev)
        cache = self.backbone.new_cache(num_samples, length) if options.kv_cache else None
        positions = torch.arange(length, device=dev)  # sliced per step: no host-to-device copy
        with clock.region(not profile):
            for i in range(g - 1, length - 1):
                with clock.region(profile):
                    logits = self._next_logits(x, positions, i, g, cache)
                if not profile:
                    nxt = sample_categorical(logits[:, -1], top_p, generator)
                    x[:, i + 1] = nxt if given is None else given.place_column(nxt, i + 1)
        return SampleOutput(tokens=x, nfe=length - g, seconds=clock.seconds)

    def _next_logits(self, x, positions, i, g, cache):
        """Logits predicting position i + 1: with the cache, the prefill [0, g) at i = g - 1, then
        one token per call; without it, the whole prefix [0, i]."""
        if cache is None:
            return self.backbone(x[:, :i + 1], positions[:i + 1], "causal", last=1)
        a = 0 if i == g - 1 else i  # the prefill feeds every given position at once
        logits = self.backbone(x[:, a:i + 1], positions[a:i + 1], "causal" if i > a else None, cache=cache, last=1)
        cache.commit(i + 1 - a)
        return logits
