"""OWT and LM1B through Hugging Face ``datasets`` with the paper's preprocessing (spec 1.2),
and a quick reachability check so that a machine without internet fails within seconds,
saying what to fetch and where to put it, instead of retrying for a minute.

    owt : train = train[:-100000]; valid = test = train[-100000:]; GPT-2 ids; EOS after each
          document; 1024-token chunks with no specials at the edges; never padded.
    lm1b: train / test splits (valid = test); detokenized sentences; bert-base-uncased ids;
          EOS after each sentence where EOS = BOS = [CLS] (the quirk of spec 1.2); chunks of
          L - 2 framed by [CLS] on both sides.
Both drop the remainder of every processing batch of WRAP_BATCH documents.
"""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from esolm.config import ConfigError, coerce
from esolm.data.cache import FORMAT_VERSION, cache_root, digest, log, storage_dtype
from esolm.data.corpus import Corpus, check_splits, load_splits, save_splits, wrap_batch
from esolm.data.tokenizer import load_tokenizer

HUB_CORPORA = {
    "owt": dict(repo="Skylion007/openwebtext", tokenizer="gpt2", folder="openwebtext"),
    "lm1b": dict(repo="billion-word-benchmark/lm1b", tokenizer="bert-base-uncased", folder="lm1b"),
}
OWT_HELD_OUT = 100_000  # the last 100k OWT documents are validation = test (spec 1.2)
# Documents per processing batch; each batch's remainder is dropped. Spec 1.2 says "each
# processing batch"; 1000 is the batch size of a batched datasets.map (INFERRED).
WRAP_BATCH = 1000
OPTIONS = dict(data_dir=None, max_documents=None)
PING_REPO, PING_FILE = "openai-community/gpt2", "config.json"  # what the reachability check asks for
_REACHABLE: dict[str, bool] = {}  # endpoint -> answered


# ------------------------------------------------------------------ reachability
def offline_requested(datasets: bool = False) -> bool:
    """Offline mode as huggingface_hub has it (``huggingface_hub.constants.HF_HUB_OFFLINE``, from
    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE when it was imported); with ``datasets``, also as
    ``datasets`` has it (``datasets.config.HF_DATASETS_OFFLINE``, from HF_DATASETS_OFFLINE; this
    imports datasets, a few seconds)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if datasets:
        import datasets.config

        return bool(datasets.config.HF_DATASETS_OFFLINE)
    return False


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a request of huggingface_hub raises when no answer comes: OSError (OfflineModeIsEnabled,
    requests' errors) and the transport errors of httpx / httpx2, whichever it runs on."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def ask_hub(endpoint: str, timeout: float = 2.0) -> bool:
    """Does the hub at ``endpoint`` answer (below 500) a HEAD of a small public file, asked
    through huggingface_hub (``get_hf_file_metadata``: no retries, no token) within ``timeout``
    seconds? False at once in offline mode (huggingface_hub raises OfflineModeIsEnabled)."""
    from huggingface_hub import get_hf_file_metadata, get_session
    from huggingface_hub.errors import HfHubHTTPError

    get_session()  # its HTTP client, made here: the timeout is for the network alone
    ok: list[bool] = []

    def ask():
        try:
            url = f"{endpoint.rstrip('/')}/{PING_REPO}/resolve/main/{PING_FILE}"  # hf_hub_url's own form
            get_hf_file_metadata(url, timeout=timeout, token=False)
            ok.append(True)
        except HfHubHTTPError as e:  # an answer: reachable, unless the server is failing
            status = getattr(getattr(e, "response", None), "status_code", None)
            ok.append(status is not None and status < 500)
        except _network_errors():
            ok.append(False)

    thread = threading.Thread(target=ask, daemon=True)  # DNS lookups ignore the request's timeout
    thread.start()
    thread.join(timeout)
    return bool(ok and ok[0])


def hub_reachable(endpoint: str | None = None, timeout: float = 2.0) -> bool:
    """False at once in huggingface_hub's offline mode (not remembered: turning it off asks
    again), else whether the hub at ``endpoint`` (default ``constants.ENDPOINT``, from
    HF_ENDPOINT) answers ``ask_hub``, asked once per process and endpoint."""
    from huggingface_hub import constants

    if offline_requested():  # huggingface_hub refuses every request; nothing to remember
        return False
    endpoint = endpoint or constants.ENDPOINT
    if endpoint not in _REACHABLE:
        _REACHABLE[endpoint] = ask_hub(endpoint, timeout)
    return _REACHABLE[endpoint]


# ------------------------------------------------------------------ fetching the raw data
def fetch_message(corpus: str, local: Path) -> str:
    repo, folder = HUB_CORPORA[corpus]["repo"], HUB_CORPORA[corpus]["folder"]
    return (
        f"corpus {corpus!r} needs the Hugging Face dataset {repo!r}, which is neither at {local} nor in the "
        f"Hugging Face cache, and the hub cannot be reached from here (offline). On a machine with internet run\n"
        f"    pip install 'datasets<4'   # the hub copy is a loading script\n"
        f"    python -c \"import datasets; datasets.load_dataset('{repo}', trust_remote_code=True)"
        f".save_to_disk('{folder}')\"\n"
        f"then copy the folder '{folder}' to {local} (or pass data_dir=PATH to load_corpus), or copy that "
        f"machine's Hugging Face cache (~/.cache/huggingface, see HF_HOME / HF_DATASETS_CACHE) here. "
        f"To train on local text instead, use the corpus text:PATH.")


def _in_hf_cache(repo: str) -> bool:
    """Does the local Hugging Face cache hold anything of ``repo``? (No network; the hub's cache
    folder as huggingface_hub has it, the datasets cache by datasets' own rule without importing it.)"""
    from huggingface_hub import constants

    hub_cache = Path(constants.HF_HUB_CACHE).expanduser()
    data_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets")).expanduser()
    name = repo.rpartition("/")[2]
    patterns = [(data_cache, f"*{name}*"), (hub_cache, f"datasets--*{name}")]
    return any(folder.is_dir() and any(folder.glob(p)) for folder, p in patterns)


@contextmanager
def _hub_offline(enabled: bool):
    """Make ``datasets`` / ``huggingface_hub`` use only the cache (no slow network retries)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def open_dataset(corpus: str, data_dir: str | Path | None, cache_dir=None):
    """The raw dataset (split name -> ``datasets.Dataset``), failing fast when offline."""
    repo = HUB_CORPORA[corpus]["repo"]
    local = Path(data_dir).expanduser() if data_dir else cache_root(cache_dir) / "hf" / HUB_CORPORA[corpus]["folder"]
    if data_dir and not local.exists():
        raise ConfigError(f"data_dir={str(data_dir)!r} does not exist; point it at a folder written by "
                          f"datasets' save_to_disk for {repo!r}")
    if local.exists():
        import datasets

        log(f"reading {repo} from {local}")
        raw = datasets.load_from_disk(str(local))
        return raw if isinstance(raw, datasets.DatasetDict) else datasets.DatasetDict(train=raw)
    online = hub_reachable() and not offline_requested(datasets=True)  # datasets imported only when online
    if not online and not _in_hf_cache(repo):
        raise ConfigError(fetch_message(corpus, local))
    import datasets

    log(f"loading {repo} through datasets ({'online' if online else 'from the local cache'}) ...")
    try:
        with _hub_offline(not online):
            try:
                return datasets.load_dataset(repo)
            except RuntimeError as e:  # datasets >= 4 no longer runs loading scripts
                if "script" not in str(e).lower():
                    raise
                return datasets.load_dataset(repo, revision="refs/convert/parquet")
    except Exception as e:  # noqa: BLE001 - any failure here has the same fix
        raise ConfigError(f"{fetch_message(corpus, local)}\n(loading failed with {type(e).__name__}: {e})") from e


# ------------------------------------------------------------------ LM1B detokenizer
_LM1B_RULES = [
    (re.compile(r"\b(https?|ftp) : / / "), r"\1://"),  # "http : / / x" -> "http://x"
    (re.compile(r" (n't)\b"), r"\1"),  # "do n't" -> "don't"
    (re.compile(r" '(s|re|ve|m|ll|d|t)\b", re.IGNORECASE), r"'\1"),  # "it 's" -> "it's"
    (re.compile(r'" ([^"]*?) "'), r'"\1"'),  # paired double quotes hug their content
    (re.compile(r" ([.,;:!?%)\]}])"), r"\1"),  # no space before closing punctuation
    (re.compile(r"([(\[{$£#]) "), r"\1"),  # no space after opening brackets and currency
    (re.compile(r" / "), "/"),
]


def lm1b_detokenize(text: str) -> str:
    """Undo LM1B's tokenized spacing ("it 's a test , he said .") before BERT tokenization."""
    for pattern, repl in _LM1B_RULES:
        text = pattern.sub(repl, text)
    return text


# ------------------------------------------------------------------ the corpora
def build(corpus: str, *, length: int, vocab_size=None, tokenizer: str | None = None, seed: int = 0,
          cache_dir=None, **options) -> Corpus:
    """The packed owt / lm1b corpus, from the on-disk cache when it has been built before."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for corpus {corpus!r}; options: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **options}
    opts["max_documents"] = coerce(opts["max_documents"], int | None, "max_documents")
    info = HUB_CORPORA[corpus]
    if tokenizer not in (None, info["tokenizer"]):
        raise ConfigError(f"corpus {corpus!r} uses the {info['tokenizer']} tokenizer (spec 1.1); got "
                          f"tokenizer={tokenizer!r}; for other combinations export the text and use text:PATH")
    min_length = 3 if corpus == "lm1b" else 2
    if length < min_length:
        raise ConfigError(f"length must be >= {min_length} for {corpus!r}; got {length}")
    limit = opts["max_documents"]
    # GPT-2 and BERT are fixed vocabularies, so their name keys the cache; the tokenizer (a
    # slow import) is loaded only after the data is known to be there.
    key = digest(FORMAT_VERSION, corpus, info["repo"], "wrap", WRAP_BATCH, OWT_HELD_OUT, info["tokenizer"],
                 length, limit)
    folder = cache_root(cache_dir) / "corpora" / f"{corpus}-L{length}-{info['tokenizer']}-{key[:12]}"
    loaded = load_splits(folder)
    raw = open_dataset(corpus, opts["data_dir"], cache_dir) if loaded is None else None
    tok = load_tokenizer(info["tokenizer"], cache_dir)
    if loaded is None:
        parts = _paper_splits(corpus, raw)
        if limit is not None:
            parts["train"] = parts["train"].select(range(min(int(limit), len(parts["train"]))))
        arrays = {s: _wrap_dataset(parts[s], corpus, s, tok, length) for s in ("train", "valid")}
        check_splits(corpus, arrays, length)
        arrays["test"] = arrays["valid"]
        meta = dict(corpus=corpus, repo=info["repo"], tokenizer=tok.name, tokenizer_fingerprint=tok.fingerprint,
                    length=length, same_as={"test": "valid"}, fingerprint=key)
        save_splits(folder, arrays, tok.vocab_size, meta)
        log(f"cached {corpus}: train {len(arrays['train'])}x{length}, valid = test "
            f"{len(arrays['valid'])}x{length} at {folder}")
        loaded = load_splits(folder)
    splits, _ = loaded
    settings = dict(vocab_size=None, tokenizer=info["tokenizer"], seed=int(seed), **opts)
    return Corpus(corpus, tok, length, splits, key, settings=settings, cache_path=folder)


def _paper_splits(corpus: str, raw) -> dict:
    """Spec 1.2: OWT holds out its last 100k documents; LM1B evaluates on its test split."""
    if corpus == "owt":
        train = raw["train"]
        n = len(train)
        if n <= OWT_HELD_OUT:
            raise ConfigError(f"openwebtext has only {n} documents; the paper's split needs more than {OWT_HELD_OUT}")
        return {"train": train.select(range(n - OWT_HELD_OUT)), "valid": train.select(range(n - OWT_HELD_OUT, n))}
    if "test" not in raw:
        raise ConfigError(f"the lm1b dataset has splits {list(raw)}; it needs 'train' and 'test'")
    return {"train": raw["train"], "valid": raw["test"]}


def _wrap_dataset(ds, corpus: str, split: str, tok, length: int) -> np.ndarray:
    """Tokenize and wrap ``ds["text"]`` batch by batch (spec 1.2), with a progress bar."""
    from tqdm.auto import tqdm

    edge = tok.bos_id if corpus == "lm1b" else None  # [CLS] ... [CLS] for LM1B; nothing for OWT
    dtype = storage_dtype(tok.vocab_size)
    out = []
    for start in tqdm(range(0, len(ds), WRAP_BATCH), desc=f"{corpus} {split}", unit="batch", leave=False):
        texts = ds[start:start + WRAP_BATCH]["text"]
        if corpus == "lm1b":
            texts = [lm1b_detokenize(t) for t in texts]
        out.append(wrap_batch(tok.encode_batch(texts), length, tok.eos_id, edge).astype(dtype))
    return np.concatenate(out) if out else np.zeros((0, length), dtype=dtype)
