"""Test-set likelihood (spec 8.1): the whole split, fixed seeds, PPL and bits per token,
and on `synthetic` the exact entropy of the source beside it (the floor)."""
from __future__ import annotations

import math
import time

import torch


@torch.no_grad()
def evaluate(model, corpus, split: str = "test", *, batch_size: int = 32, max_batches: int | None = None,
             exact: bool = False, num_orders: int = 1, seed: int = 1, progress: bool = True, **opts) -> dict:
    """NLL of ``split`` under ``model`` (NELBO unless ``exact``), token-weighted over all sequences.

    Besides the totals it returns ``per_sequence_nll`` (each sequence's NLL sum, nats) and
    ``per_sequence_tokens`` (the tokens that sum is normalized by, the model's ``num_tokens``),
    in split order: sum(nll) / sum(tokens) is ``nll_per_token``, and resampling the pairs gives
    the bootstrap interval of the PPL (esolm/metrics/bootstrap.py ``ppl_interval``).
    Randomness (t, masks, orders) is seeded by ``seed`` and does not disturb the caller's RNG.
    """
    data = corpus.splits[split]
    if max_batches is not None:
        data = data[: max_batches * batch_size]
    batches = list(torch.split(data, batch_size))
    if exact and not model.capabilities.exact_likelihood:
        from esolm.config import ConfigError

        raise ConfigError(f"{model.name} has no exact likelihood (capabilities.exact_likelihood is False); "
                          f"drop --exact to get its NELBO")
    was_training = model.training
    model.eval()
    total, tokens, per_seq, per_tok = 0.0, 0, [], []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(batches, desc=f"eval {model.name} {'exact' if exact else 'nll'} on {split}", unit="batch",
                   dynamic_ncols=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in bar if bar is not None else batches:
            kwargs = dict(opts, num_orders=num_orders) if exact else dict(opts)
            out = model.nll(batch.to(model.device), exact=exact, **kwargs)
            total += float(out.per_sequence.sum())
            tokens += int(out.num_tokens.sum())
            per_seq += out.per_sequence.double().cpu().tolist()
            per_tok += out.num_tokens.long().cpu().tolist()
            if bar is not None:
                bar.set_postfix(ppl=f"{math.exp(total / max(tokens, 1)):.2f}")
    model.train(was_training)
    nll = total / max(tokens, 1)
    result = {
        "split": split, "exact": exact, "num_orders": num_orders if exact else None,
        "num_sequences": int(data.shape[0]), "num_tokens": tokens,
        "nll_per_token": nll, "ppl": math.exp(nll), "bits_per_token": nll / math.log(2),
        "nll_per_sequence": total / max(int(data.shape[0]), 1), "seconds": time.perf_counter() - t0,
        "seed": seed,
        "per_sequence_nll": per_seq, "per_sequence_tokens": per_tok,
    }
    true_seq = corpus.true_nll_per_sequence() if hasattr(corpus, "true_nll_per_sequence") else None
    if true_seq is not None:
        # per-token floor in this model's own units: the source's entropy per sequence over the
        # tokens this model's NLL is normalized by
        result["true_nll_per_sequence"] = true_seq
        result["true_nll_per_token"] = true_seq * data.shape[0] / max(tokens, 1)
        result["true_ppl"] = math.exp(result["true_nll_per_token"])
    return result


def format_result(model_name: str, r: dict) -> str:
    kind = f"exact NLL (IW bound, K={r['num_orders']})" if r["exact"] else "NLL (NELBO bound for diffusion models)"
    s = (f"{model_name} {kind} on {r['split']}: {r['nll_per_token']:.4f} nats/token, "
         f"PPL {r['ppl']:.2f}, {r['bits_per_token']:.3f} bits/token "
         f"over {r['num_sequences']} sequences / {r['num_tokens']} tokens")
    if r.get("true_nll_per_token") is not None:
        s += (f"\n  true NLL of the source (the floor): {r['true_nll_per_token']:.4f} nats/token, "
              f"PPL {r['true_ppl']:.2f}")
    return s
