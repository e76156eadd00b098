"""Drawing samples to the JSONL format every scorer reads: one object per sample with
text, tokens (natural order), nfe, seconds (of its batch), model, config, tokenizer and
the corpus that rebuilds it.

Two ways to draw them, with the same samples for the same seed (one generator seeded once,
carried from batch to batch):

Conditioned samples (spec 15.4: prompts or infill templates, :class:`Conditions`) carry their
prompt or template text in the record's ``condition`` field; the set of conditions is part of
the shared fields (``conditioning``), so a file of other conditions is another configuration.

* :func:`draw_samples` returns the records (the pipeline's sample jobs write them at once);
* :func:`stream_samples` (``run.py sample``) appends each finished batch to the output, flushed
  and fsynced, and commits it in a small progress file beside it (the samples' count, their
  bytes and the generator's state after the batch). An interrupted run keeps every committed
  batch; the same command run again cuts what was written after the last commit (a torn last
  line) and continues from the saved generator state, so the finished file equals the file of
  an uninterrupted run. A file of another configuration (model weights, options, seed, counts,
  device) is refused, never overwritten.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from esolm.conditioning import Given, from_text, stack, template_ids
from esolm.config import ConfigError
from esolm.io import atomic_write_bytes, atomic_write_json, content_hash, json_default, named

PROGRESS_VERSION = 1


# ---------------------------------------------------------------------------- conditions
CONDITION_KINDS = ("prompt", "infill")


@dataclass
class Conditions:
    """The given tokens of a conditioned sampling call: ``texts`` (prompts, or infill templates
    where ``[MASK]`` / ``[MASK:n]`` mark free tokens), their one-row ``givens``, and ``per``
    samples of each, condition after condition (sample i keeps condition i // per)."""

    kind: str
    texts: list[str]
    givens: list[Given]
    per: int

    @property
    def total(self) -> int:
        return len(self.texts) * self.per

    @property
    def digest(self) -> str:
        """A short digest of the kind and the texts (it names the default output file)."""
        return content_hash([self.kind, *(t + "\n" for t in self.texts)])[:10]

    def meta(self) -> dict:
        return {"kind": self.kind, "count": len(self.texts), "per_condition": self.per, "digest": self.digest}

    def rows(self, start: int, n: int) -> tuple[Given, list[str]]:
        """The Given of samples [start, start + n) and their condition texts."""
        index = [i // self.per for i in range(start, start + n)]
        return stack([self.givens[i] for i in index]), [self.texts[i] for i in index]


def make_conditions(kind: str, texts: list[str], tokenizer, length: int, per: int) -> Conditions:
    """``texts`` as given tokens of samples of ``length``: prompts (BOS first, as every sample
    starts) or infill templates; a ConfigError naming the text that does not fit."""
    if kind not in CONDITION_KINDS:
        raise ConfigError(f"unknown condition kind {kind!r}; choose one of {CONDITION_KINDS}")
    if not texts:
        raise ConfigError(f"no {kind} given: pass at least one (a file holds one per line)")
    build = from_text if kind == "prompt" else template_ids
    givens = []
    for i, text in enumerate(texts):
        try:
            givens.append(build(text, tokenizer, length))
        except ConfigError as e:
            raise ConfigError(f"{kind} {i + 1} ({text[:40]!r}): {e}") from None
    return Conditions(kind, list(texts), givens, int(per))


# ---------------------------------------------------------------------------- records
def sample_meta(corpus, *, seed: int, options: dict, model_name: str, model_config: dict, corpus_spec: dict,
                checkpoint: str | None, conditions: Conditions | None = None) -> dict:
    """The fields every record of one sampling call shares (after text, tokens, nfe, seconds,
    batch_size, and ``condition`` when conditioned)."""
    meta = {"model": model_name, "config": model_config, "checkpoint": checkpoint,
            "tokenizer": corpus.tokenizer.name, "tokenizer_fingerprint": corpus.tokenizer.fingerprint,
            "corpus": corpus_spec, "steps": options.get("steps"), "top_p": options.get("top_p", 1.0),
            "seed": seed, "options": dict(options)}
    if conditions is not None:
        meta["conditioning"] = conditions.meta()
    return meta


def _batch_records(res, texts: list[str], n: int, meta: dict) -> list[dict]:
    return [{"text": text, "tokens": toks, "nfe": res.nfe, "seconds": res.seconds, "batch_size": n,
             **meta, "options": dict(meta["options"])} for toks, text in zip(res.tokens.tolist(), texts)]


def batch_sizes(num_samples: int, batch_size: int, start: int = 0):
    """The size of each sampling call from sample ``start`` on: ``batch_size`` each, the last one the remainder."""
    return (min(batch_size, num_samples - s) for s in range(start, num_samples, batch_size))


def batch_size_of(i: int, num_samples: int, batch_size: int) -> int:
    """The size of the batch that holds sample ``i`` (from 0)."""
    return min(batch_size, num_samples - i // batch_size * batch_size)


def sample_batches(model, corpus, sizes, generator, options: dict, meta: dict, conditions: Conditions | None = None,
                   start: int = 0):
    """Yield ``(records, result)`` for each batch size in ``sizes``, drawn with ``generator``;
    with ``conditions`` the batches hold samples ``start``, ``start + 1``, ... of them."""
    for n in sizes:
        if conditions is None:
            res = model.sample(n, generator=generator, **options)
        else:
            given, condition = conditions.rows(start, n)
            res = model.sample(n, generator=generator, given=given, **options)
        texts = corpus.tokenizer.decode_batch(res.tokens.tolist())
        records = _batch_records(res, texts, n, meta)
        if conditions is not None:
            for record, text in zip(records, condition):
                record["condition"] = text
        start += n
        yield records, res


def _generator(model, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


def draw_samples(model, corpus, *, num_samples: int, batch_size: int, seed: int, options: dict,
                 model_name: str, model_config: dict, corpus_spec: dict, checkpoint: str | None = None,
                 log=None, conditions: Conditions | None = None) -> list[dict]:
    """``num_samples`` samples in batches, with one generator seeded by ``seed`` (with
    ``conditions``: ``num_samples`` must be ``conditions.total``)."""
    _check_total(num_samples, conditions)
    meta = sample_meta(corpus, seed=seed, options=options, model_name=model_name, model_config=model_config,
                       corpus_spec=corpus_spec, checkpoint=checkpoint, conditions=conditions)
    records: list[dict] = []
    for batch, res in sample_batches(model, corpus, batch_sizes(num_samples, batch_size), _generator(model, seed),
                                     options, meta, conditions):
        records += batch
        if log is not None:
            log(f"  {len(records)}/{num_samples} samples, NFE {res.nfe}, {res.seconds:.2f} s for this batch")
    return records


def _check_total(num_samples: int, conditions: Conditions | None) -> None:
    if conditions is not None and num_samples != conditions.total:
        raise ConfigError(f"{num_samples} samples asked for, but {len(conditions.texts)} conditions x "
                          f"{conditions.per} samples each make {conditions.total}")


def jsonl_bytes(records: list[dict]) -> bytes:
    """The JSONL lines of ``records`` (one object per line, each ending in a newline)."""
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    data = jsonl_bytes(records)
    return atomic_write_bytes(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------- the progress file
def progress_path(out: str | Path) -> Path:
    """The progress file of the samples file ``out``: hidden, beside it, a short name (it fits
    beside any valid file name, and so does its temporary file)."""
    out = Path(out)
    return out.with_name(f".{out.name[:48]}.{content_hash(out.name)[:8]}.progress.json")


def read_progress(out: str | Path) -> dict | None:
    """The progress file of ``out`` (None when there is none); a ConfigError naming it when it is corrupt."""
    path = progress_path(out)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or state.get("version") != PROGRESS_VERSION:
            raise ValueError("not a progress file of this version")
        int(state["done"]), int(state["bytes"]), dict(state["identity"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the sampling progress file {path} of {out} is corrupt ({e}); delete both files and "
                          f"sample again, or pass --out elsewhere") from None
    return state


def incomplete_note(out: str | Path) -> str | None:
    """Why the samples file ``out`` is unfinished (an interrupted ``run.py sample``), or None."""
    state = read_progress(out)
    if state is None or state.get("complete"):
        return None
    return (f"{out} is unfinished: {state['done']} of {state['identity']['num_samples']} samples "
            f"(`run.py sample` was interrupted); rerun that sample command to finish it")


def _normal(obj):
    """``obj`` as it reads back from JSON (tuples as lists, tensors as lists)."""
    return json.loads(json.dumps(obj, default=json_default))


def weights_digest(model) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes)."""
    chunks = []
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        chunks += [f"{name}{t.dtype}{tuple(t.shape)}", t.reshape(-1).view(torch.uint8).numpy().tobytes()]
    return content_hash(chunks)


def _differs(have: dict, want: dict) -> list[str]:
    return sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))


# ---------------------------------------------------------------------------- checking an existing file
def _refuse(out: Path, why: str) -> ConfigError:
    return ConfigError(f"{out} {why}; it is kept as it is: pass --out elsewhere, or delete it to sample again")


def check_finished_file(out: Path, identity: dict) -> None:
    """A samples file without a progress file (written at once, or its progress file deleted) counts
    as this configuration's finished output only if every line is a sample of it, in the right
    number and batches; otherwise a ConfigError (it is never overwritten)."""
    want, num_samples, batch_size = identity["meta"], identity["num_samples"], identity["batch_size"]
    count = 0
    with open(out, "rb") as f:
        for count, line in enumerate(f, start=1):
            try:
                r = json.loads(line)
            except ValueError:
                raise _refuse(out, f"is not a samples file of this configuration (line {count} is not JSON)") from None
            if not isinstance(r, dict):
                raise _refuse(out, f"is not a samples file (line {count} is not an object)")
            diff = _differs({k: r.get(k) for k in want}, want)
            if diff:
                raise _refuse(out, f"holds samples of another configuration ({', '.join(diff)} differ)")
            if count <= num_samples and r.get("batch_size") != batch_size_of(count - 1, num_samples, batch_size):
                raise _refuse(out, "holds samples drawn in other batches (batch_size differs)")
    if count != num_samples:
        raise _refuse(out, f"holds {count} samples of this configuration, not the {num_samples} asked for")


def _resume_point(out: Path, identity: dict) -> dict | None:
    """The committed progress to continue from: None to start afresh (no file, or an empty one: a
    progress file left beside a deleted samples file is replaced); ``{"complete": True}`` when
    ``out`` already is this configuration's finished file; a ConfigError for another configuration's."""
    if not out.exists() or out.stat().st_size == 0:
        return None
    state = read_progress(out)
    if state is None:
        check_finished_file(out, identity)
        return {"complete": True, "done": identity["num_samples"]}
    diff = _differs(state["identity"], identity)
    if diff:
        detail = ", ".join(sorted(set(diff) - {"meta"}) + _differs(state["identity"].get("meta", {}),
                                                                    identity["meta"]))
        raise _refuse(out, f"holds samples of another configuration ({detail} differ; progress file "
                           f"{progress_path(out)})")
    size = out.stat().st_size
    if size < state["bytes"]:
        raise _refuse(out, f"is shorter ({size} bytes) than the {state['done']} samples its progress file "
                           f"{progress_path(out)} committed ({state['bytes']} bytes)")
    return state


# ---------------------------------------------------------------------------- estimates
def bytes_per_sample(model, corpus, meta: dict, batch_size: int) -> int:
    """About how many bytes one sample takes in the JSONL: a record of random ids decoded."""
    length, vocab = model.config.length, corpus.tokenizer.vocab_size
    ids = torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    record = {"text": corpus.tokenizer.decode(ids), "tokens": ids, "nfe": length, "seconds": 1.0e3,
              "batch_size": batch_size, **meta}
    return len(json.dumps(record)) + 1


def free_bytes(folder: Path) -> int:
    """Free space of the disk that holds ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def check_size(out: Path, per_sample: int, remaining: int) -> int:
    """The estimated bytes of ``remaining`` samples; a ConfigError when the disk of ``out`` has less free space."""
    need, free = per_sample * remaining, free_bytes(out.parent)
    if need > free:
        raise ConfigError(f"{remaining} samples of about {human_bytes(per_sample)} each need about "
                          f"{human_bytes(need)}, but the disk of {out.parent} has {human_bytes(free)} free; "
                          f"ask for fewer with --num-samples, or pass --out on a larger disk")
    return need


# ---------------------------------------------------------------------------- streaming
def _commit(out: Path, identity: dict, done: int, size: int, generator, complete: bool = False) -> None:
    state = {"version": PROGRESS_VERSION, "samples": out.name, "identity": identity, "done": done, "bytes": size,
             "complete": complete,
             "generator": None if complete else base64.b64encode(generator.get_state().numpy().tobytes()).decode()}
    atomic_write_json(progress_path(out), state)


def _restore(generator, state: dict) -> None:
    raw = base64.b64decode(state["generator"])
    generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def _open_at(out: Path, size: int):
    """``out`` opened for appending after its first ``size`` bytes (anything after them is cut)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    f = open(out, "ab")
    f.truncate(size)
    f.seek(size)
    return f


def stream_samples(out: str | Path, model, corpus, *, num_samples: int, batch_size: int, seed: int, options: dict,
                   model_name: str, model_config: dict, corpus_spec: dict, checkpoint: str | None = None,
                   log=None, on_batch=None, conditions: Conditions | None = None) -> dict:
    """Draw ``num_samples`` samples into ``out`` batch by batch (module docstring), continuing a
    committed partial run of the same configuration. ``on_batch(done)`` is called after each
    committed batch (a test hook). ``conditions``: the given tokens of each sample (then
    ``num_samples`` = ``conditions.total``). Returns ``dict(path, done, drawn, seconds)``."""
    out, say = Path(out), log or (lambda *a: None)
    _check_total(num_samples, conditions)
    meta = sample_meta(corpus, seed=seed, options=options, model_name=model_name, model_config=model_config,
                       corpus_spec=corpus_spec, checkpoint=checkpoint, conditions=conditions)
    identity = _normal(dict(meta=meta, num_samples=num_samples, batch_size=batch_size,
                            weights=weights_digest(model), device=torch.device(model.device).type))
    state = _resume_point(out, identity)
    if state is not None and state.get("complete"):
        say(f"{out} already holds the {num_samples} samples of this configuration; nothing to draw")
        return dict(path=out, done=num_samples, drawn=0, seconds=0.0)
    gen, done, size = _generator(model, seed), 0, 0
    if state is not None:
        _restore(gen, state)
        done, size = state["done"], state["bytes"]
        say(f"continuing {out}: {done} of {num_samples} samples are there")
    per_sample = bytes_per_sample(model, corpus, meta, batch_size)
    need = check_size(out, per_sample, num_samples - done)
    say(f"about {human_bytes(need)} for {num_samples - done} samples ({human_bytes(per_sample)} each) -> {out}")
    try:
        return _stream(out, (model, corpus, gen, options, meta, conditions), identity, done, size, say, on_batch)
    except OSError as e:  # a full disk names the file it could not write
        raise named(e, out)


def _stream(out: Path, sampler: tuple, identity: dict, done: int, size: int, say, on_batch) -> dict:
    """Append the batches after sample ``done`` (``size`` committed bytes) to ``out``, committing each."""
    model, corpus, gen, options, meta, conditions = sampler
    num_samples, batch_size = identity["num_samples"], identity["batch_size"]
    left = -(-(num_samples - done) // batch_size)  # batches to draw
    if done == 0:
        _commit(out, identity, 0, 0, gen)  # the generator's seed state, before the file is written
    t0, drawn = time.perf_counter(), 0
    try:
        with _open_at(out, size) as f:
            batches = sample_batches(model, corpus, batch_sizes(num_samples, batch_size, done), gen, options, meta,
                                     conditions, start=done)
            for i, (batch, res) in enumerate(batches):
                f.write(jsonl_bytes(batch))
                f.flush()
                os.fsync(f.fileno())
                done, size, drawn = done + len(batch), f.tell(), drawn + len(batch)
                _commit(out, identity, done, size, gen)
                say(f"  {done}/{num_samples} samples, NFE {res.nfe}, {res.seconds:.2f} s for this batch")
                if i == 0 and left > 1:
                    say(f"  about {human_seconds((time.perf_counter() - t0) * (left - 1))} more for the other "
                        f"{left - 1} batches (estimated from the first)")
                if on_batch is not None:
                    on_batch(done)
    except KeyboardInterrupt:
        say(f"interrupted: {done} of {num_samples} samples are in {out}; rerun the same command to continue")
        raise
    _commit(out, identity, done, size, gen, complete=True)
    return dict(path=out, done=done, drawn=drawn, seconds=time.perf_counter() - t0)


def head_texts(path: str | Path, n: int = 3) -> list[str]:
    """The texts of the first ``n`` samples of a samples JSONL (read line by line)."""
    texts = []
    with open(path, "rb") as f:
        for line in f:
            if len(texts) == n:
                break
            texts.append(json.loads(line)["text"])
    return texts
