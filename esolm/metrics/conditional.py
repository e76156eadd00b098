"""The CPU conditional task (issue 27 item 3, its CPU part): complete held-out passages of the
run's corpus and score the completions against the held-out truth.

Two forms over test passages of the model's length L (spec 15.4):

* ``prefix``: positions 0 .. L/2 - 1 given (BOS and the first half), the second half free;
* ``infill``: the middle quarter free (positions (L - L/4)/2 .. + L/4), the rest given.

Each model that lists the form in ``capabilities_for(config).conditioning`` samples the free
positions with its own sampler options (``model.sample(n, given=Given(...), **options)``); a
model without it is skipped with a note (:func:`skip_note`), never silently. Per form, over the
examples (each number with its 95 % bootstrap interval over examples, esolm/metrics/bootstrap.py):

* ``cond_nll``: the judge's NLL in nats per scored token of the completed sequence (context and
  completion read left to right as one sequence), over the *scored span*: every target from the
  first free position to the end, i.e. the free tokens and, for an infill, the given suffix that
  must follow them (a left-to-right judge sees how the completion joins its right context only
  there). Repeated EOS targets are dropped by gen PPL's first-EOS rule (spec 8.2). Token-weighted
  over examples, under each of the preset's judges (``cond_nll``, ``cond_nll_judge2``);
* ``ref_nll``: the same for the held-out truth in place of the completion: the level a perfect
  completion reaches (the same sequences for every model of a form);
* ``chrf``: chrF (:func:`chrf`) of the completion's free span against the truth's, mean over examples;
* ``token_match``: the fraction of free positions whose token equals the truth's, mean over examples;
* ``dist_sim``: the distributional similarity (esolm/metrics/distributional.py) of the free
  spans of the completions against those of the truths, as a set;
* ``sec_per_example``: seconds of a whole sampling call (device synchronized around it, an
  untimed warm-up call first: esolm/metrics/timing.py's conventions) divided by the examples it
  completed, mean over the timed calls.

    judges = {"": load_evaluator("ngram", corpus=corpus)}
    out = run_form(model, corpus, judges, form="infill", num_examples=32, batch_size=16,
                   options=dict(steps=128))
    out["metrics"]["cond_nll"], out["metrics"]["chrf"]
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from esolm.conditioning import FORMS, INFILL, PREFIX, Given
from esolm.config import ConfigError
from esolm.interface import Clock
from esolm.metrics.bootstrap import bootstrap_interval, interval_fields, mean_interval
from esolm.metrics.genppl import valid_targets

CHRF_ORDER = 6  # character n-grams n = 1..6 (Popović 2015)
CHRF_BETA = 2.0  # recall weighted beta^2 = 4 times precision
WARMUP_SEED = 10_007  # the generator of the untimed warm-up and the extra timing rounds (never the scored draws)


# ------------------------------------------------------------------------------ the forms
def free_positions(form: str, length: int) -> torch.Tensor:
    """[length] bool, True where the form leaves a position free: the second half (prefix) or
    the middle quarter (infill)."""
    pos = torch.arange(length)
    if form == PREFIX:
        return pos >= length // 2
    if form == INFILL:
        width = max(1, length // 4)
        start = (length - width) // 2
        return (pos >= start) & (pos < start + width)
    raise ConfigError(f"unknown conditional form {form!r}; forms: {', '.join(FORMS)}")


def task_given(truth: torch.Tensor, free: torch.Tensor, mask_id: int) -> Given:
    """The given tokens of the truth rows [n, L]: the truth where ``free`` is False, the mask id
    where it is True (the free truth never reaches the sampler)."""
    mask = (~free.bool())[None].expand_as(truth)
    return Given(torch.where(mask, truth, torch.full_like(truth, mask_id)), mask)


def passages(corpus, num_examples: int, split: str = "test") -> torch.Tensor:
    """[num_examples, L] held-out rows of ``split``, spread evenly over the split (the first,
    the last and evenly between), so that they come from many places of the text."""
    rows = corpus.splits[split]
    if num_examples < 1 or num_examples > len(rows):
        raise ConfigError(f"the conditional task needs 1 <= num_examples <= the {len(rows)} {split} sequences of "
                          f"{corpus.name}; got {num_examples}: lower conditional.num_examples")
    index = torch.linspace(0, len(rows) - 1, num_examples).round().long()
    return rows[index].clone()


def skip_note(name: str, forms, form: str) -> str | None:
    """Why a model that samples under ``forms`` (its capabilities' conditioning) has no row of
    ``form``; None when it has one."""
    if form in tuple(forms):
        return None
    have = ", ".join(forms) if forms else "none"
    return f"{name} is skipped for the {form} form: it does not sample under it (its conditioning forms: {have})"


def model_forms(model) -> tuple[str, ...]:
    """The forms a built model samples under."""
    return tuple(model.capabilities_for(model.config).conditioning)


# ------------------------------------------------------------------------------------ chrF
def char_ngrams(text: str, n: int) -> Counter:
    """The character n-grams of ``text`` with its whitespace removed (chrF's convention)."""
    chars = "".join(text.split())
    return Counter(chars[i:i + n] for i in range(len(chars) - n + 1))


def chrf(hypothesis: str, reference: str, *, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """chrF of one hypothesis against one reference, in [0, 100] (Popović 2015, "chrF: character
    n-gram F-score for automatic MT evaluation", WMT 2015).

    Whitespace is removed; for each n = 1..``order`` the character n-gram precision P_n and recall
    R_n count the matched n-grams (clipped counts: a hypothesis n-gram matches at most as often as
    it occurs in the reference); P and R are their arithmetic means over the orders both texts
    have n-grams of (a text shorter than n has none), and chrF = 100 (1 + beta^2) P R / (beta^2 P + R),
    beta = 2 weighting recall. Two texts without characters score 100 when equal (both empty),
    0 when only one is empty; no match at all scores 0.
    """
    if order < 1 or beta <= 0:
        raise ConfigError(f"chrF needs order >= 1 and beta > 0; got order={order}, beta={beta}")
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    if not hyp or not ref:
        return 100.0 if hyp == ref else 0.0
    precisions, recalls = [], []
    for n in range(1, min(order, len(hyp), len(ref)) + 1):
        h, r = char_ngrams(hyp, n), char_ngrams(ref, n)
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    p, r = float(np.mean(precisions)), float(np.mean(recalls))
    if p + r == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * p * r / (b2 * p + r)


# ------------------------------------------------------------------------------- the judges
def check_judge(judge, tokenizer, length: int) -> None:
    """The task scores the model's own token ids position by position, so a judge must read the
    corpus's ids (an AR checkpoint of this harness, "ngram", "source") over L positions."""
    if getattr(judge, "tokenizer_fingerprint", None) != tokenizer.fingerprint:
        raise ConfigError(f"the conditional task scores completions position by position in the corpus's token ids, "
                          f"but judge {judge.name} reads tokenizer {judge.tokenizer_name}, not {tokenizer.name}; use an "
                          f"AR checkpoint of this harness trained on the corpus, 'ngram' or 'source' as the judge")
    if judge.max_length is not None and judge.max_length < length:
        raise ConfigError(f"judge {judge.name} reads {judge.max_length} positions but the passages have L = {length}; "
                          f"use a judge of context >= {length}")


@torch.no_grad()
def judge_nll(judge, tokens: torch.Tensor, free: torch.Tensor, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(NLL sum in nats [n], scored targets [n]) of each row of ``tokens`` [n, L] under ``judge``
    (one left-to-right pass over the whole row), over the scored span: the targets from the first
    free position of ``free`` [L] to the end, less repeated EOS targets (the first-EOS rule)."""
    first = int(free.nonzero()[0, 0]) if bool(free.any()) else tokens.shape[1]
    span = torch.arange(1, tokens.shape[1]) >= first  # target j + 1 at index j
    nll, count = [], []
    for rows in torch.split(tokens.cpu(), batch_size):
        attention = torch.ones_like(rows, dtype=torch.bool)
        logp = judge.token_logprobs(rows, attention).detach().to("cpu", torch.float64)
        keep = valid_targets(rows, attention, judge.eos_id) & span[None]
        nll.append(-torch.where(keep, logp, torch.zeros_like(logp)).sum(1))
        count.append(keep.sum(1))
    return torch.cat(nll).numpy(), torch.cat(count).numpy().astype(np.float64)


def nll_fields(name: str, nll: np.ndarray, count: np.ndarray) -> dict:
    """{name, name_lo, name_hi}: the token-weighted NLL sum(nll) / sum(count) over examples and
    its 95 % interval (examples resampled whole, each with its own count)."""
    if count.sum() <= 0:
        return {name: None, **interval_fields(name, None)}
    value = float(nll.sum() / count.sum())
    if not np.isfinite(nll).all():
        return {name: value, **interval_fields(name, None)}
    return {name: value, **interval_fields(name, bootstrap_interval(
        lambda x, c: x.sum(axis=1) / np.maximum(c.sum(axis=1), 1.0), nll, count))}


def mean_fields(name: str, values) -> dict:
    """{name, name_lo, name_hi}: the mean of per-example ``values`` and its 95 % interval."""
    values = np.asarray(values, dtype=np.float64)
    return {name: float(values.mean()), **interval_fields(name, mean_interval(values))}


# ------------------------------------------------------------------------------- scoring
def span_texts(tokens: torch.Tensor, free: torch.Tensor, tokenizer) -> list[str]:
    """The free span of each row as text (special tokens left out)."""
    return tokenizer.decode_batch(tokens[:, free.bool()].tolist(), skip_special=True)


def score(completions: torch.Tensor, truth: torch.Tensor, free: torch.Tensor, tokenizer, judges: dict) -> dict:
    """Every quality metric of the module docstring for completions [n, L] of the truth [n, L]:
    ``metrics`` (each with _lo / _hi) and ``per_example`` (the values the intervals resample).
    ``judges``: {metric suffix: evaluator}, "" for the preset's first judge, "_judge2" for its second."""
    from esolm.metrics.distributional import distributional_score

    completions, truth, free = completions.cpu(), truth.cpu(), free.cpu().bool()
    if completions.shape != truth.shape:
        raise ConfigError(f"completions {tuple(completions.shape)} and truth {tuple(truth.shape)} differ in shape")
    hyp, ref = span_texts(completions, free, tokenizer), span_texts(truth, free, tokenizer)
    match = (completions[:, free] == truth[:, free]).double().mean(1).numpy()
    chrfs = np.array([chrf(h, r) for h, r in zip(hyp, ref)])
    metrics, per = {}, dict(token_match=match.tolist(), chrf=chrfs.tolist())
    for suffix, judge in judges.items():
        check_judge(judge, tokenizer, truth.shape[1])
        (cn, cc), (rn, rc) = judge_nll(judge, completions, free), judge_nll(judge, truth, free)
        metrics.update(**nll_fields(f"cond_nll{suffix}", cn, cc), **nll_fields(f"ref_nll{suffix}", rn, rc))
        per.update({f"cond_nll{suffix}": cn.tolist(), f"cond_count{suffix}": cc.tolist(),
                    f"ref_nll{suffix}": rn.tolist(), f"ref_count{suffix}": rc.tolist()})
    dist = distributional_score(hyp, ref)
    metrics.update(**mean_fields("chrf", chrfs), **mean_fields("token_match", match), dist_sim=dist["score"],
                   dist_sim_lo=dist["score_lo"], dist_sim_hi=dist["score_hi"], num_examples=len(truth),
                   free_tokens=int(free.sum()))
    return dict(metrics=metrics, per_example=per, texts=dict(completion=hyp, truth=ref))


# ------------------------------------------------------------------------------- sampling
def complete(model, truth: torch.Tensor, free: torch.Tensor, *, options: dict, batch_size: int, seed: int = 0,
             warmup: int = 1, rounds: int = 1) -> dict:
    """The model's completions of the truth rows [n, L] (its free positions drawn, the rest
    given), ``batch_size`` rows per sampling call, one generator seeded ``seed`` carried from
    call to call. Timing: ``warmup`` untimed calls first, each scored call timed as a whole
    (Clock: the device synchronized around it), then ``rounds`` - 1 more timed passes over the
    batches (another generator, their samples not kept). Returns ``tokens`` [n, L], ``seconds``
    (per example of each timed call), ``nfe`` (of each scored call) and the per-call ``batch``."""
    if batch_size < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(f"the conditional task needs batch_size >= 1, rounds >= 1, warmup >= 0; got "
                          f"batch_size={batch_size}, rounds={rounds}, warmup={warmup}")
    given = task_given(truth, free, model.config.mask_id)
    device = model.device
    spare = torch.Generator(device=device).manual_seed(seed + WARMUP_SEED)
    starts = range(0, len(truth), batch_size)
    for _ in range(warmup):
        model.sample(min(batch_size, len(truth)), generator=spare, given=given.rows(slice(0, batch_size)), **options)
    clock = Clock(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens, seconds, nfe = [], [], []
    for r in range(rounds):
        for s in starts:
            rows = given.rows(slice(s, s + batch_size))
            before = clock.seconds
            with clock.region():
                out = model.sample(len(rows.mask), generator=generator if r == 0 else spare, given=rows, **options)
            seconds.append((clock.seconds - before) / len(rows.mask))
            if r == 0:
                tokens.append(out.tokens.cpu())
                nfe.append(out.nfe)
    return dict(tokens=torch.cat(tokens), seconds=seconds, nfe=nfe, batch=batch_size)


def run_form(model, corpus, judges: dict, *, form: str, num_examples: int, batch_size: int, options: dict,
             seed: int = 0, warmup: int = 1, rounds: int = 1, split: str = "test") -> dict:
    """One form of the task for one model: ``metrics`` (quality with intervals, ``sec_per_example``
    with its interval, ``nfe``), ``per_example``, a few ``examples`` (given text, completion, truth)
    and ``skipped``: None, or the note saying why a model without the form has no metrics."""
    note = skip_note(getattr(model, "name", type(model).__name__), model_forms(model), form)
    if note is not None:
        return dict(form=form, skipped=note, metrics={}, per_example={}, examples=[])
    truth = passages(corpus, num_examples, split)
    free = free_positions(form, truth.shape[1])
    drawn = complete(model, truth, free, options=options, batch_size=batch_size, seed=seed, warmup=warmup,
                     rounds=rounds)
    scored = score(drawn["tokens"], truth, free, corpus.tokenizer, judges)
    metrics = dict(scored["metrics"], **mean_fields("sec_per_example", drawn["seconds"]),
                   nfe=float(np.mean(drawn["nfe"])), timed_calls=len(drawn["seconds"]))
    tok = corpus.tokenizer
    examples = [dict(given=tok.decode(torch.where(free, tok.mask_id, truth[i]).tolist()),
                     completion=scored["texts"]["completion"][i], truth=scored["texts"]["truth"][i])
                for i in range(min(3, len(truth)))]
    per = dict(scored["per_example"], seconds=drawn["seconds"])
    return dict(form=form, skipped=None, metrics=metrics, per_example=per, examples=examples)
