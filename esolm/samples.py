"""Drawing samples to the JSONL format every scorer reads: one object per sample with
text, tokens (natural order), nfe, seconds (of its batch), model, config, tokenizer and
the corpus that rebuilds it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from esolm.io import atomic_write_bytes


def draw_samples(model, corpus, *, num_samples: int, batch_size: int, seed: int, options: dict,
                 model_name: str, model_config: dict, corpus_spec: dict, checkpoint: str | None = None,
                 log=None) -> list[dict]:
    """``num_samples`` samples in batches, with one generator seeded by ``seed``."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    records = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        res = model.sample(n, generator=gen, **options)
        texts = corpus.tokenizer.decode_batch(res.tokens.tolist())
        for toks, text in zip(res.tokens.tolist(), texts):
            records.append({
                "text": text, "tokens": toks, "nfe": res.nfe, "seconds": res.seconds, "batch_size": n,
                "model": model_name, "config": model_config, "checkpoint": checkpoint,
                "tokenizer": corpus.tokenizer.name, "tokenizer_fingerprint": corpus.tokenizer.fingerprint,
                "corpus": corpus_spec, "steps": options.get("steps"), "top_p": options.get("top_p", 1.0),
                "seed": seed, "options": dict(options),
            })
        if log is not None:
            log(f"  {start + n}/{num_samples} samples, NFE {res.nfe}, {res.seconds:.2f} s for this batch")
    return records


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    return atomic_write_bytes(path, lambda f: f.write(data))
