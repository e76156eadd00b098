"""Gen-PPL evaluators (spec 8.2): the true synthetic source, a Kneser-Ney n-gram of the
corpus's train split (``esolm.metrics.ngram``), an AR checkpoint of this harness, or any
causal LM that ``transformers`` loads (local folder or hub name).

Every evaluator retokenizes text its own way (``encode``) and scores next tokens
(``token_logprobs``); chunking, padding and the first-EOS rule live in ``genppl``.
"""
from __future__ import annotations

import abc
import math
from pathlib import Path

import numpy as np
import torch

from esolm.config import ConfigError
from esolm.data.hub import hub_reachable
from esolm.metrics.genppl import score_rows


class Evaluator(abc.ABC):
    """A causal scorer of text. ``max_length`` is its context (None: unlimited)."""

    kind = "evaluator"

    def __init__(self, name: str, *, spec: str, num_parameters: int | None, max_length: int | None,
                 eos_id: int | None, pad_id: int, test_ppl: float | None = None, tokenizer: str | None = None,
                 device="cpu"):
        self.name, self.spec, self.num_parameters, self.max_length = name, spec, num_parameters, max_length
        self.eos_id, self.pad_id, self.test_ppl, self.tokenizer_name = eos_id, pad_id, test_ppl, tokenizer
        self.device = torch.device(device)
        self.test_ppl_source = "checkpoint" if test_ppl is not None else None

    # -- what subclasses provide ------------------------------------------------------
    @abc.abstractmethod
    def encode(self, texts: list[str]) -> list[list[int]]:
        ...

    @abc.abstractmethod
    def token_logprobs(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """[B, n-1] log p(ids[:, j+1] | ids[:, <=j]) of right-padded rows ``ids`` [B, n]."""

    def _hidden(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"evaluator {self.name} has no hidden states for MAUVE features; "
                          f"use featurizer='minilm' or a transformers encoder")

    # -- shared -------------------------------------------------------------------------
    def score_token_ids(self, rows: list[list[int]], *, max_length: int | None = None, batch_size: int = 8,
                        progress: bool = False) -> tuple[float, int]:
        """(NLL sum in nats, number of scored tokens) of rows already in evaluator ids."""
        return score_rows(self, rows, max_length=max_length, batch_size=batch_size, progress=progress)

    def score_texts(self, texts: list[str], **kwargs) -> tuple[float, int]:
        return self.score_token_ids(self.encode(texts), **kwargs)

    @torch.no_grad()
    def hidden_features(self, texts: list[str], *, max_text_length: int = 512, batch_size: int = 8,
                        pooling: str = "last") -> np.ndarray:
        """[N, d] final hidden state of each text's last token (MAUVE's convention) or the mean."""
        limit = min(max_text_length, self.max_length or max_text_length)
        rows = [r[:limit] for r in self.encode(texts)]
        return featurize_rows(rows, self.pad_id, batch_size, self._hidden, pooling)

    def measure_test_ppl(self, texts: list[str], *, max_length: int | None, batch_size: int = 8) -> float:
        """Set ``test_ppl`` (when the evaluator brought none) from held-out texts."""
        nll, n = self.score_texts(texts, max_length=max_length, batch_size=batch_size)
        self.test_ppl = math.exp(nll / n) if n else None
        self.test_ppl_source = f"measured on {len(texts)} held-out test texts"
        return self.test_ppl

    def describe(self) -> dict:
        return dict(name=self.name, params=self.num_parameters, test_ppl=self.test_ppl,
                    test_ppl_source=self.test_ppl_source, kind=self.kind, spec=self.spec,
                    context=self.max_length, tokenizer=self.tokenizer_name)


def pool_hidden(hidden: torch.Tensor, attention: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, d] from [B, n, d]: the last real token's state ("last") or the masked mean ("mean")."""
    attention = attention.to(hidden.device)
    if pooling == "last":
        last = attention.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        w = attention.to(hidden.dtype)[..., None]
        return (hidden * w).sum(1) / w.sum(1)
    raise ConfigError(f"pooling must be 'last' or 'mean'; got {pooling!r}")


@torch.no_grad()
def featurize_rows(rows: list[list[int]], pad_id: int, batch_size: int, hidden_fn, pooling: str) -> np.ndarray:
    """Pooled final hidden states of id rows, ``batch_size`` rows at a time, in input order."""
    if any(len(r) == 0 for r in rows):
        raise ConfigError("a text tokenizes to nothing, so it has no features; drop empty samples/references")
    feats = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        n = max(len(r) for r in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), n), dtype=torch.bool)
        for b, r in enumerate(batch):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            attention[b, :len(r)] = True
        feats.append(pool_hidden(hidden_fn(ids, attention), attention, pooling).float().cpu())
    return torch.cat(feats).numpy()


# ------------------------------------------------------------------ the true source
class SourceEvaluator(Evaluator):
    """The synthetic corpus's own Markov source: exact log-probabilities, so its gen PPL is
    the exact answer; text maps back to the same ids through the synthetic tokenizer."""

    kind = "source"

    def __init__(self, corpus, device="cpu"):
        src, tok = corpus.source, corpus.tokenizer
        transition = getattr(src, "transition", None)
        params = int((transition > 0).sum()) if transition is not None else None
        super().__init__(f"true source of {corpus.name} ({tok.name})", spec="source", num_parameters=params,
                         max_length=None, eos_id=tok.eos_id, pad_id=tok.bos_id, tokenizer=tok.name, device=device)
        self.source, self.tokenizer, self.tokenizer_fingerprint = src, tok, tok.fingerprint
        test = corpus.splits["test"].tolist()
        nll, n = self.score_token_ids(test, batch_size=64)
        self.test_ppl, self.test_ppl_source = math.exp(nll / n), f"exact, on the {len(test)} test sequences"

    def encode(self, texts):
        return self.tokenizer.encode_batch(list(texts))

    def token_logprobs(self, ids, attention):
        return self.source.token_log_probs(ids.cpu())


# ------------------------------------------------------------------ harness AR checkpoint
class CheckpointEvaluator(Evaluator):
    """An AR checkpoint of this harness (``next_token_logprobs``), with its corpus's tokenizer
    and the test perplexity stored in the checkpoint."""

    kind = "checkpoint"

    def __init__(self, path: Path, device="cpu", corpus=None):
        from esolm.checkpoint import load_model

        model, state = load_model(path, device=device)
        if not model.capabilities.next_token_scoring:
            raise ConfigError(f"checkpoint {path} holds a {state['model_name']!r} model, but a gen-PPL evaluator must "
                              f"be an AR checkpoint, or another model that scores text left to right "
                              f"(capabilities.next_token_scoring); train one with `run.py train --model ar ...`")
        spec = dict(state.get("corpus") or {})
        if corpus is None or getattr(corpus, "spec", lambda: None)() != spec:
            corpus = load_corpus_spec(spec, f"the corpus of evaluator checkpoint {path}")
        tok = corpus.tokenizer
        metrics = state.get("metrics") or {}
        test_ppl = metrics.get("test_ppl") or (metrics.get("test") or {}).get("ppl")
        super().__init__(f"{state['model_name']} checkpoint {path}", spec=str(path),
                         num_parameters=model.num_parameters(), max_length=model.config.length,
                         eos_id=tok.eos_id, pad_id=tok.eos_id, test_ppl=test_ppl, tokenizer=tok.name, device=device)
        self.model, self.tokenizer, self.tokenizer_fingerprint = model, tok, tok.fingerprint
        self.corpus = corpus

    @torch.no_grad()
    def measure_test_ppl(self, texts, *, max_length=None, batch_size: int = 8) -> float:
        """Exact test PPL (spec 8.1) on the first ``len(texts)`` test sequences of its own corpus."""
        rows = self.corpus.splits["test"][:max(len(texts), 1)]
        nll = total = 0.0
        for batch in torch.split(rows, batch_size):
            out = self.model.nll(batch.to(self.model.device))
            nll, total = nll + float(out.per_sequence.sum()), total + float(out.num_tokens.sum())
        self.test_ppl = math.exp(nll / total)
        self.test_ppl_source = f"measured on {len(rows)} test sequences of its corpus"
        return self.test_ppl

    def encode(self, texts):
        return self.tokenizer.encode_batch(list(texts))

    @torch.no_grad()
    def token_logprobs(self, ids, attention):
        return self.model.next_token_logprobs(ids.to(self.model.device))

    def _hidden(self, ids, attention):
        backbone = getattr(self.model, "backbone", None)
        if backbone is None or not hasattr(backbone, "head"):
            return super()._hidden(ids, attention)
        captured = {}
        handle = backbone.head.register_forward_pre_hook(lambda module, args: captured.update(h=args[0]))
        try:
            ids = ids.to(self.model.device)
            with backbone.inference():  # the fast paths, as the model's own scoring uses them
                backbone(ids, torch.arange(ids.shape[1], device=ids.device), "causal")
        finally:
            handle.remove()
        return captured["h"]


# ------------------------------------------------------------------ transformers causal LM
class HFEvaluator(Evaluator):
    """Any causal LM ``transformers`` loads: a local folder, or a hub name (GPT-2 Large in the paper)."""

    kind = "transformers"

    def __init__(self, spec: str, device="cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok, model = from_pretrained(spec, AutoTokenizer, AutoModelForCausalLM)
        archs = getattr(model.config, "architectures", None) or []
        if archs and not any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs):
            raise ConfigError(f"evaluator {spec} is a {archs[0]}, not a causal LM; gen PPL needs a causal LM "
                              f"such as GPT-2 (use this model as a MAUVE featurizer instead)")
        cfg = model.config
        context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        context = int(context or min(tok.model_max_length, 1 << 20))
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
        super().__init__(str(spec), spec=str(spec), num_parameters=sum(p.numel() for p in model.parameters()),
                         max_length=context, eos_id=eos, pad_id=pad, tokenizer=type(tok).__name__, device=device)
        self.model, self.tokenizer = model.to(self.device).eval(), tok

    def encode(self, texts):
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def token_logprobs(self, ids, attention):
        ids, attention = ids.to(self.device), attention.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=attention.long()).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), -1, ids[:, 1:, None])[..., 0].double()

    def _hidden(self, ids, attention):
        out = self.model(input_ids=ids.to(self.device), attention_mask=attention.long().to(self.device),
                         output_hidden_states=True)
        return out.hidden_states[-1]


# ------------------------------------------------------------------ lookup
def load_evaluator(spec: str, *, device="cpu", corpus=None) -> Evaluator:
    """``"source"`` (needs the synthetic ``corpus``), ``"ngram"`` / ``"ngram:N"`` (a Kneser-Ney
    n-gram of ``corpus``'s train split, esolm/metrics/ngram.py), a harness ``.safetensors``
    checkpoint, a local transformers folder, or a hub name (offline: only if cached; else a
    ConfigError)."""
    if not spec:
        raise ConfigError("no evaluator given; pass --evaluator source (synthetic corpus), ngram (a Kneser-Ney "
                          "n-gram of the corpus's train split), a path to an AR checkpoint of this harness, a local "
                          "transformers folder, or a hub name like gpt2-large")
    spec = str(spec)
    if spec == "ngram" or spec.startswith("ngram:"):
        from esolm.metrics.ngram import load_ngram

        return load_ngram(spec, corpus, device=device)
    if spec == "source":
        if corpus is None or getattr(corpus, "source", None) is None:
            name = getattr(corpus, "name", None)
            raise ConfigError(f"evaluator 'source' is the true distribution of the synthetic corpus, but the samples "
                              f"come from corpus {name!r}; pass an AR checkpoint or a transformers causal LM instead")
        return SourceEvaluator(corpus, device=device)
    path = Path(spec).expanduser()
    if path.is_file():
        return CheckpointEvaluator(path, device=device, corpus=corpus)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"evaluator folder {path} has no config.json; save the model and its tokenizer there "
                              f"with save_pretrained(), or pass an AR checkpoint file")
        return HFEvaluator(str(path), device=device)
    if spec.endswith((".safetensors", ".pt", ".pth", ".ckpt")) or spec.startswith((".", "/", "~")):
        raise ConfigError(f"evaluator {spec} does not exist; pass an existing checkpoint file or model folder")
    return HFEvaluator(spec, device=device)


def load_corpus_spec(spec: dict, what: str):
    """``load_corpus(**spec)`` with a message naming ``what`` when it cannot be rebuilt."""
    from esolm.data import corpus_from_spec

    kw = dict(spec or {})
    if "name" not in kw:
        raise ConfigError(f"{what} is not recorded (no corpus name); re-create the file with `run.py`")
    name = kw.pop("name")
    try:
        return corpus_from_spec(dict(spec))
    except ConfigError as e:
        raise ConfigError(f"cannot rebuild {what} ({name}, {kw}): {e}") from None


def from_pretrained(spec: str, *loaders, what: str = "evaluator"):
    """``loader.from_pretrained(spec)`` for each loader: a folder or a cached hub copy first;
    the hub only when it is reachable, so an offline machine fails in seconds, not minutes."""
    local = Path(spec).is_dir()
    try:
        return tuple(loader.from_pretrained(spec, local_files_only=True) for loader in loaders)
    except Exception as e:  # OSError when absent, ValueError for a config the loader cannot take, ...
        if local or not hub_reachable():  # False at once in huggingface_hub's offline mode
            raise ConfigError(_load_failure(what, spec, local, True, e)) from None
    try:
        return tuple(loader.from_pretrained(spec) for loader in loaders)
    except Exception as e:
        raise ConfigError(_load_failure(what, spec, local, False, e)) from None


def _load_failure(what: str, spec: str, local: bool, offline: bool, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if local:
        return (f"cannot load {what} folder {spec} with transformers ({first}); it must hold the model and its "
                f"tokenizer saved with save_pretrained()")
    where = "it is not cached and the Hugging Face hub is offline or unreachable" if offline else \
        "it could not be fetched from the Hugging Face hub"
    fix = ("pass an AR checkpoint of this harness, or 'source' for the synthetic corpus" if what == "evaluator"
           else "use featurizer='minilm', which works offline")
    return (f"cannot load {what} {spec!r}: {where} ({first}). Fix: on a machine with internet save it to a folder "
            f"(from_pretrained({spec!r}).save_pretrained(DIR) for the model and its tokenizer) and pass that "
            f"folder, or {fix}")
