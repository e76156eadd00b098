"""``run.py score``: every sample-quality number of one samples JSONL in one metrics JSON.

    result = score_samples("run/samples/samples-steps64-seed0.jsonl", evaluator="source")

writes ``samples-steps64-seed0.metrics.json`` beside the samples (spec 8.2-8.5): gen PPL
(with its evaluator's name, size and test PPL), entropy, self-BLEU, MAUVE, NFE and the
sampler's timing, plus the settings and the machine they came from.

Overwrite rule: the metrics JSON records its ``inputs`` (the samples' sha256, the
evaluator, every setting that changes a number). An existing file with the same inputs is
replaced (it is the same measurement, recomputed); one with different inputs is never
replaced unless ``overwrite=True``; pass ``out=`` to keep both.
"""
from __future__ import annotations

import json
from pathlib import Path

from esolm.config import ConfigError
from esolm.io import content_hash, file_hash
from esolm.log import printer
from esolm.metrics.entropy import entropy_summary
from esolm.metrics.evaluators import load_corpus_spec, load_evaluator
from esolm.metrics.genppl import gen_ppl
from esolm.metrics.mauve import mauve_score
from esolm.metrics.selfbleu import self_bleu
from esolm.metrics.timing import environment_fingerprint, summarize
from esolm.samples import incomplete_note

METRICS_VERSION = 1  # bump when a change alters the numbers for the same inputs


def metrics_path(samples_path: str | Path) -> Path:
    """``X.jsonl`` -> ``X.metrics.json`` in the same folder."""
    p = Path(samples_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".metrics.json")


def read_samples(path: str | Path) -> list[dict]:
    """The records of a samples JSONL, each with ``text`` (str) and ``tokens`` (list of ints)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"samples file {path} does not exist; write one with `run.py sample`")
    unfinished = incomplete_note(path)
    if unfinished:
        raise ConfigError(unfinished)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {n} is not JSON ({e.msg}); the file is truncated or not a samples "
                              f"JSONL: re-create it with `run.py sample`") from None
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not isinstance(r.get("tokens"), list) \
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in r["tokens"]):
            raise ConfigError(f"{path} line {n} is not a sample (needs 'text': str and 'tokens': list of ints); "
                              f"re-create the file with `run.py sample`")
        records.append(r)
    if not records:
        raise ConfigError(f"samples file {path} is empty; run `run.py sample` to fill it before scoring")
    return records


def check_samples(records: list[dict], tokenizer, path="samples") -> None:
    """One tokenizer and corpus for all records, ids inside its vocabulary, and every
    ``tokens`` decoding to its ``text`` (with or without special tokens) under it."""
    for key in ("tokenizer", "tokenizer_fingerprint", "corpus"):
        values = {json.dumps(r.get(key), sort_keys=True) for r in records}
        if len(values) > 1:
            raise ConfigError(f"{path} mixes samples with different {key} values ({', '.join(sorted(values)[:3])}); "
                              f"score each model's samples in its own file")
    fp = records[0].get("tokenizer_fingerprint")
    if fp is not None and fp != tokenizer.fingerprint:
        raise ConfigError(f"{path} was written with tokenizer {records[0].get('tokenizer')} (fingerprint {fp}) but its "
                          f"corpus now gives {tokenizer.name} (fingerprint {tokenizer.fingerprint}); the samples come "
                          f"from another tokenizer: re-sample them or rebuild the original corpus")
    for n, r in enumerate(records, start=1):
        ids = r["tokens"]
        if ids and (min(ids) < 0 or max(ids) >= tokenizer.vocab_size):
            raise ConfigError(f"{path} sample {n} has token ids outside [0, {tokenizer.vocab_size}) of "
                              f"{tokenizer.name}; the samples come from another tokenizer")
        if r["text"] not in (tokenizer.decode(ids), tokenizer.decode(ids, skip_special=True)):
            raise ConfigError(f"{path} sample {n}: its tokens do not decode to its text under {tokenizer.name}; the "
                              f"samples come from another tokenizer or were edited: re-sample them")


def score_samples(samples_path, *, evaluator: str | None = None, references: list[str] | None = None,
                  mauve: bool = True, device="cpu", corpus=None, batch_size: int = 8, max_length: int | None = None,
                  featurizer: str = "minilm", mauve_seed: int = 25, max_text_length: int = 512,
                  self_bleu_samples: int = 500, out=None, overwrite: bool = False, progress: bool = True,
                  gen_ppl_ref_pad: bool = False, second_evaluator: str | None = None) -> dict:
    """Validate the samples, compute every metric, write the metrics JSON atomically, return it.

    ``evaluator``: "source" (default on the synthetic corpus), an AR checkpoint, a
    transformers folder or hub name. ``references``: MAUVE's human texts (default: the
    corpus's first test sequences, special tokens stripped, as many as the samples).
    ``gen_ppl_ref_pad``: also the gen PPL under the authors' padding rule (a sample with no EOS
    scores its first pad as EOS; docs/reference_switches.md) in gen_ppl["gen_ppl_ref_pad"].
    ``second_evaluator``: a second gen-PPL judge (any spec ``evaluator`` takes, e.g. "ngram"),
    whose gen_ppl dict goes to ``gen_ppl_judge2`` so a verdict can be checked under both.
    """
    from esolm.io import atomic_write_json

    say = printer("score") if progress else (lambda *_: None)
    path = Path(samples_path)
    records = read_samples(path)
    corpus = _samples_corpus(records, corpus, path)
    tok = corpus.tokenizer
    check_samples(records, tok, path)
    evaluator = _default_evaluator(evaluator, corpus)
    tokens = [r["tokens"] for r in records]
    max_length = int(max_length or max(len(t) for t in tokens))
    inputs = _inputs(path, evaluator, max_length, references, self_bleu_samples, gen_ppl_ref_pad,
                     dict(featurizer=featurizer, mauve_seed=mauve_seed, max_text_length=max_text_length) if mauve
                     else None)
    if second_evaluator is not None:
        inputs["second_evaluator"] = _evaluator_id(second_evaluator)
    out = Path(out) if out is not None else metrics_path(path)

    refs = _references(references, corpus, len(records)) if mauve else None
    say(f"scoring {len(records)} samples of {records[0].get('model')} from {path}")
    ev = load_evaluator(evaluator, device=device, corpus=corpus)
    _check_evaluator_tokenizer(ev, tok)
    _check_overwrite(out, inputs, overwrite)
    say(f"gen PPL under {ev.name} ({ev.num_parameters} parameters), truncation {max_length}, context {ev.max_length}")
    result_ppl = _gen_ppl(records, ev, corpus, max_length=max_length, batch_size=batch_size, progress=progress,
                          ref_pad=gen_ppl_ref_pad)
    judge2 = _second_judge(second_evaluator, records, corpus, device=device, max_length=max_length,
                           batch_size=batch_size, progress=progress, ref_pad=gen_ppl_ref_pad, say=say)
    clean = tok.decode_batch(tokens, skip_special=True)
    result = dict(
        samples=str(path), path=str(out), inputs=inputs, num_samples=len(records),
        **{k: records[0].get(k) for k in _RECORD_FIELDS},
        gen_ppl=result_ppl, entropy=entropy_summary(tokens), self_bleu=_self_bleu_summary(clean, self_bleu_samples),
        nfe=_nfe_summary(records), timing=_timing_summary(records), environment=environment_fingerprint(device))
    if judge2 is not None:
        result["gen_ppl_judge2"] = judge2
    result["distributional"] = _distributional(clean, refs if refs is not None else references, corpus, say)
    result["mauve"] = _mauve(clean, refs, ev, say, device=device, featurizer=featurizer, mauve_seed=mauve_seed,
                             max_text_length=max_text_length) if mauve else None
    atomic_write_json(out, result)
    _say_scored(say, result, out)
    return result


def _mauve(clean: list[str], refs: list[str], ev, say, *, device, featurizer: str, mauve_seed: int,
           max_text_length: int) -> dict | None:
    """MAUVE of the cleaned samples against ``refs``; None when every sample is empty."""
    if not any(clean):  # e.g. the all-EOS calibration row: no text to featurize, no MAUVE
        say("no MAUVE: every sample is empty once special tokens are stripped")
        return None
    say(f"MAUVE against {len(refs)} references with featurizer {featurizer}")
    return mauve_score(clean, refs, featurizer=featurizer, evaluator=ev, seed=mauve_seed,
                       max_text_length=max_text_length, device=device)


def _say_scored(say, result: dict, out: Path) -> None:
    g = result["gen_ppl"]["gen_ppl"]
    say(("gen PPL undefined (no target scored)" if g is None else f"gen PPL {g:.3f}")
        + f", entropy {result['entropy']['mean']:.3f}"
        + (f", MAUVE {result['mauve']['mauve']:.4f}" if result["mauve"] else "") + f"; wrote {out}")


# what the metrics JSON copies from the first sample record
_RECORD_FIELDS = ("model", "checkpoint", "config", "corpus", "tokenizer", "steps", "top_p", "seed", "options")


def _default_evaluator(evaluator: str | None, corpus) -> str:
    """``evaluator``, or "source" on a corpus that has one (the synthetic corpus)."""
    if evaluator is not None:
        return evaluator
    if getattr(corpus, "source", None) is None:
        raise ConfigError("no evaluator given; pass --evaluator with an AR checkpoint of this harness, a local "
                          "transformers folder or a hub name (only the synthetic corpus defaults to 'source')")
    return "source"


def _inputs(path: Path, evaluator: str, max_length: int, references: list[str] | None, self_bleu_samples: int,
            gen_ppl_ref_pad: bool, mauve: dict | None) -> dict:
    """Every setting that changes a number (the overwrite rule compares these); ``mauve``: its
    settings (featurizer, mauve_seed, max_text_length), None when MAUVE is off."""
    mauve_on = mauve is not None
    mauve = mauve or {}
    inputs = dict(samples_sha256=file_hash(path), evaluator=_evaluator_id(evaluator),
                  max_length=max_length, mauve=mauve_on, featurizer=mauve.get("featurizer"),
                  mauve_seed=mauve.get("mauve_seed"), max_text_length=mauve.get("max_text_length"),
                  references=_digest(references) if references is not None else "corpus test split",
                  self_bleu_samples=self_bleu_samples, metrics_version=METRICS_VERSION)
    if gen_ppl_ref_pad:
        inputs["gen_ppl_ref_pad"] = True
    return inputs


def _check_evaluator_tokenizer(ev, tok) -> None:
    if ev.kind == "checkpoint" and getattr(ev, "tokenizer_fingerprint", None) != tok.fingerprint:
        raise ConfigError(f"evaluator {ev.name} uses tokenizer {ev.tokenizer_name}, the samples {tok.name}; an AR "
                          f"evaluator must be trained on the samples' corpus (or use a transformers causal LM)")


def _gen_ppl(records: list[dict], ev, corpus, *, max_length: int, batch_size: int, progress: bool,
             ref_pad: bool) -> dict:
    """Gen PPL of the samples' texts under ``ev``; the evaluator's own test PPL is measured on the
    corpus's test split when it does not carry one."""
    texts = [r["text"] for r in records]
    result = gen_ppl(texts, ev, max_length=max_length, batch_size=batch_size, progress=progress, ref_pad=ref_pad)
    if ev.test_ppl is None:
        test_texts = corpus.texts("test", min(len(records), len(corpus.splits["test"])), skip_special=False)
        ev.measure_test_ppl(test_texts, max_length=max_length, batch_size=batch_size)
        result["evaluator"] = ev.describe()
    return result


def _second_judge(spec: str | None, records: list[dict], corpus, *, device, max_length: int, batch_size: int,
                  progress: bool, ref_pad: bool, say) -> dict | None:
    """The gen_ppl dict of the samples under the judge ``spec`` (None when none is asked for),
    its test PPL measured like the first judge's."""
    if spec is None:
        return None
    ev = load_evaluator(spec, device=device, corpus=corpus)
    _check_evaluator_tokenizer(ev, corpus.tokenizer)
    say(f"second judge: gen PPL under {ev.name} ({ev.num_parameters} parameters)")
    return _gen_ppl(records, ev, corpus, max_length=max_length, batch_size=batch_size, progress=progress,
                    ref_pad=ref_pad)


def _self_bleu_summary(clean: list[str], max_samples: int) -> dict | None:
    if len(clean) < 2:
        return None
    return dict(self_bleu=self_bleu(clean, max_samples=max_samples), n_gram=4, max_samples=max_samples,
                words="whitespace split, special tokens stripped", smoothing="nltk method1")


def _samples_corpus(records: list[dict], corpus, path: Path):
    """The corpus the samples were drawn from: rebuilt from the file, or the one passed if it matches."""
    spec = records[0].get("corpus")
    if corpus is None:
        return load_corpus_spec(spec, f"the corpus of the samples in {path}")
    if spec is not None and _canon(corpus.spec()) != _canon(spec):
        raise ConfigError(f"the corpus passed ({corpus.spec()}) is not the one the samples in {path} were drawn "
                          f"from ({spec}); pass the samples' corpus or none (it is rebuilt from the file)")
    return corpus


def _distributional(clean: list[str], references: list[str] | None, corpus, say) -> dict | None:
    """The byte k-gram similarity to real text (docs/metrics.md) with its 95 % interval over
    samples, against the same references as MAUVE (the first test rows, one per sample); None
    where the test split is too short to give them and none were passed."""
    from esolm.metrics.distributional import distributional_score

    n = len(clean)
    if references is None and len(corpus.splits["test"]) < n:
        say(f"no distributional score: {corpus.name} has fewer test rows than the {n} samples")
        return None
    refs = _references(references, corpus, n)
    r = distributional_score(clean, refs)
    say(f"distributional similarity {r['score']:.4f} [{r['score_lo']:.4f}, {r['score_hi']:.4f}] against {n} "
        f"references")
    return r


def _references(references: list[str] | None, corpus, n: int) -> list[str]:
    """MAUVE's human texts, one per sample (spec 8.4): the given ones, or the corpus's first
    ``n`` test sequences with special tokens stripped."""
    if references is None:
        if len(corpus.splits["test"]) < n:
            raise ConfigError(f"MAUVE needs one reference per sample ({n}) but the test split of {corpus.name} has "
                              f"{len(corpus.splits['test'])} sequences; pass references=, score fewer samples, or "
                              f"disable MAUVE (--no-mauve)")
        return corpus.texts("test", n, skip_special=True)
    if len(references) < n:
        raise ConfigError(f"MAUVE needs one reference per sample: got {len(references)} references for {n} samples; "
                          f"pass more references or disable MAUVE (--no-mauve)")
    return list(references[:n])


def _check_overwrite(out: Path, inputs: dict, overwrite: bool) -> None:
    if not out.exists() or overwrite:
        return
    try:
        old = json.loads(out.read_text()).get("inputs")
    except (json.JSONDecodeError, OSError, AttributeError):
        old = None
    if old != inputs:
        diff = sorted(k for k in set(inputs) | set(old or {}) if (old or {}).get(k) != inputs.get(k))
        raise ConfigError(f"{out} already holds metrics computed from different inputs ({', '.join(diff)}); "
                          f"pass overwrite=True (--overwrite) to replace it or out= (--out) to write elsewhere")


def _batches(records: list[dict]) -> list[list[dict]]:
    """Records grouped by sampling batch: ``batch_size`` consecutive records when recorded,
    else runs of consecutive records with equal (seconds, nfe)."""
    groups, i = [], 0
    while i < len(records):
        size = records[i].get("batch_size")
        if isinstance(size, int) and size >= 1:
            groups.append(records[i:i + size])
            i += size
            continue
        j = i + 1
        key = (records[i].get("seconds"), records[i].get("nfe"))
        while j < len(records) and (records[j].get("seconds"), records[j].get("nfe")) == key:
            j += 1
        groups.append(records[i:j])
        i = j
    return groups


def _nfe_summary(records: list[dict]) -> dict | None:
    nfe = [r["nfe"] for r in records if isinstance(r.get("nfe"), (int, float))]
    if not nfe:
        return None
    return dict(mean=sum(nfe) / len(nfe), min=min(nfe), max=max(nfe), per="sample (each batch's NFE)")


def _timing_summary(records: list[dict]) -> dict | None:
    """Seconds per sampling batch as the sampler reported them (the first includes warm-up;
    ``mean_excluding_first`` drops it). For controlled timings use ``time_sampler``."""
    batches = [b for b in _batches(records) if isinstance(b[0].get("seconds"), (int, float))]
    if not batches:
        return None
    secs = [float(b[0]["seconds"]) for b in batches]
    total = sum(secs)
    n = sum(len(b) for b in batches)
    toks = sum(len(r["tokens"]) for b in batches for r in b)
    out = dict(seconds_per_batch=summarize(secs), batch_sizes=sorted({len(b) for b in batches}),
               samples_per_second=n / total if total > 0 else None,
               tokens_per_second=toks / total if total > 0 else None)
    if len(secs) > 1:
        out["mean_excluding_first"] = sum(secs[1:]) / (len(secs) - 1)
    return out


def _evaluator_id(spec: str) -> str:
    p = Path(str(spec)).expanduser()
    return str(p.resolve()) if p.exists() else str(spec)


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _digest(texts: list[str]) -> str:
    return content_hash(json.dumps(list(texts)))
