"""Training throughput: tokens per second of one forward and backward pass of each model's loss
(no optimizer step), on the session backbone, at the preset's dropout."""
from __future__ import annotations

import pytest
import torch

from esolm import registry
from esolm.metrics.timing import summarize
from protocol import load, timed

# (key, label, registry name, overrides): Eso-LM (B) at alpha_0 = 1 is all diffusion (one
# L-token pass); at 0.25 half the batch takes the sequential term's 2L-token pass (7.3)
MODELS = [
    ("ar", "AR", "ar", {}),
    ("mdlm", "MDLM", "mdlm", {}),
    ("bd3lm-4", "BD3-LM L'=4", "bd3lm", dict(block_size=4)),
    ("bd3lm-16", "BD3-LM L'=16", "bd3lm", dict(block_size=16)),
    ("esolm-b", "Eso-LM (B) a0=1", "esolm-b", dict(alpha_0=1.0)),
    ("esolm-b-0.25", "Eso-LM (B) a0=.25", "esolm-b", dict(alpha_0=0.25)),
]


@pytest.mark.parametrize("entry", MODELS, ids=[m[0] for m in MODELS])
def test_training_tokens_per_second(benchmark, bench, entry):
    key, label, name, overrides = entry
    s = bench.settings
    L, B = s.train_length, s.train_batch
    torch.manual_seed(s.seed)
    model = registry.build(name, preset=s.preset, vocab_size=s.vocab_size, length=L, **overrides)
    model.to(s.device).train()
    tokens = torch.randint(1, s.vocab_size - 1, (B, L), device=s.device)

    def step():
        model.zero_grad(set_to_none=True)
        model.loss(tokens).loss.backward()

    seconds = []
    before = load()
    benchmark.pedantic(lambda: seconds.append(timed(step)[0]), rounds=s.rounds,
                       warmup_rounds=s.warmup, iterations=1)
    del seconds[:s.warmup]
    st = summarize(seconds)
    bench.add("training", dict(model=key, label=label, overrides=overrides, length=L, batch=B,
                                    dropout=model.config.dropout, seconds=st, tokens_per_second=B * L / st["median"],
                                    load_before=before, load_after=load()))
    assert all(p.grad is not None for p in model.backbone.blocks[0].parameters())
