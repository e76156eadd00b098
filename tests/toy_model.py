"""A toy model in one file, for the test that a new model needs only its file and one
registration (tests/test_pipeline.py::test_a_new_model_is_one_file_and_one_registration).

Position-wise independent categoricals: p(x) = prod_l softmax(W[l])[x_l] for l >= 1 (BOS first).
Its NLL is exact, sampling is one network call, and nothing in it is special to the harness.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esolm.config import ModelConfig
from esolm.interface import NLL, Capabilities, Clock, Display, LanguageModel, LossOutput, SampleOptions, SampleOutput
from esolm.sampling import sample_categorical


@dataclass
class ToyConfig(ModelConfig):
    init_scale: float = 0.02  # standard deviation of the initial logits


@dataclass
class ToySampleOptions(SampleOptions):
    temperature: float = 1.0  # logits are divided by this before the draw


class ToyLM(LanguageModel):
    config_class = ToyConfig
    sample_options_class = ToySampleOptions
    capabilities = Capabilities(kv_cache=False, exact_likelihood=False, single_pass_likelihood=True)

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.logits = nn.Parameter(torch.randn(config.length, config.vocab_size) * config.init_scale)

    @classmethod
    def display(cls, config: ToyConfig) -> Display:
        return Display("Toy", "Toy", "#949494", marker="X", order=5000)

    def _token_nll(self, tokens: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.logits.float(), -1)[: tokens.shape[1]]
        return -logp.gather(1, tokens.t()).t()[:, 1:]  # [B, L - 1]: BOS is given

    def loss(self, tokens, valid=None) -> LossOutput:
        self.check_tokens(tokens)
        nll = self._token_nll(tokens)
        n = torch.tensor(nll.numel(), dtype=torch.long)
        return LossOutput(loss=nll.mean(), nll_sum=nll.sum().detach(), num_tokens=n)

    def nll(self, tokens, *, exact=False, **opts) -> NLL:
        self.check_tokens(tokens)
        nll = self._token_nll(tokens).double().sum(1)
        return NLL(per_sequence=nll, num_tokens=torch.full_like(nll, tokens.shape[1] - 1, dtype=torch.long))

    @torch.no_grad()
    def generate(self, num_samples, options, *, generator=None, profile=False) -> SampleOutput:
        length, top_p = self.sample_length(options), options.top_p
        clock = Clock(self.device)
        with clock.region():
            logits = (self.logits[:length] / float(options.temperature)).expand(num_samples, length, -1).clone()
            logits[..., self.config.mask_id] = float("-inf")  # a sample holds no mask
        flat = sample_categorical(logits.reshape(-1, logits.shape[-1]), top_p, generator)
        tokens = flat.view(num_samples, length)
        tokens[:, 0] = self.config.bos_id
        return SampleOutput(tokens=tokens, nfe=1, seconds=clock.seconds)
