"""Atomic writes, the content hash, checkpoints as safetensors + JSON (and the old .pt ones),
the library LR schedule, the append-only training log and checkpoint_every=0."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch

from esolm import registry
from esolm.checkpoint import (LEGACY_NAME, NAME, companions, convert_legacy, load_model, read_checkpoint,
                              save_checkpoint)
from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.io import atomic_write_files, atomic_write_json, content_hash, file_hash
from esolm.train import fit, learning_rate, lr_scheduler, seed_everything, train_config


def old_learning_rate(cfg, step):
    """The hand-written schedule the trainer used before torch.optim.lr_scheduler."""
    if step + 1 < cfg.warmup or cfg.decay == "constant":
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    progress = (step + 1 - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.min_lr_ratio
    return cfg.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def scheduled_lrs(cfg, start=0):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg, start)
    out = []
    for _ in range(start, cfg.steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, sched


@pytest.mark.parametrize("ov", [dict(warmup=10), dict(warmup=10, decay="cosine", min_lr_ratio=0.1),
                                dict(warmup=0, decay="cosine", min_lr_ratio=0.0), dict(warmup=150, decay="cosine")])
def test_lr_scheduler_gives_the_old_formulas_lr_bit_for_bit_at_every_step_and_after_a_resume(ov):
    cfg = train_config("smoke", steps=100, lr=1e-3, **ov)
    lrs, sched = scheduled_lrs(cfg)
    assert lrs == [old_learning_rate(cfg, s) for s in range(cfg.steps)] == [learning_rate(cfg, s) for s in range(100)]
    assert sched.last_epoch == cfg.steps
    resumed, _ = scheduled_lrs(cfg, start=37)
    assert resumed == lrs[37:]


def synthetic():
    return load_corpus("synthetic", length=16)


def train(out, steps=8, stop_after=None, name="mdlm", seed=None, **ov):
    corpus = synthetic()
    cfg = train_config("smoke", steps=steps, **ov)
    seed_everything(cfg.seed if seed is None else seed)
    model = registry.build(name, preset="smoke", **corpus.model_fields())
    return model, fit(name, model, corpus, cfg, out, progress=False, stop_after=stop_after, log=lambda *a: None)


def lines(path):
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in path.read_text().splitlines()]


def test_checkpoint_every_zero_writes_only_the_final_checkpoint_and_negatives_are_refused(tmp_path):
    _, r = train(tmp_path / "a", steps=4, checkpoint_every=0, stop_after=3)
    assert not (tmp_path / "a" / NAME).exists() and not r["finished"]
    _, r = train(tmp_path / "a", steps=4, checkpoint_every=0)  # starts over: nothing to resume from
    assert r["finished"] and read_checkpoint(tmp_path / "a" / NAME)["step"] == 4
    for key in ("checkpoint_every", "eval_every", "log_every"):
        with pytest.raises(ConfigError, match=f"{key} must be >= 0; got -1"):
            train(tmp_path / key, steps=2, **{key: -1})


def test_the_log_is_appended_to_never_rewritten_and_cut_once_on_resume(tmp_path):
    _, full = train(tmp_path / "a", steps=12, checkpoint_every=5, ema=0.9)
    log = tmp_path / "b" / "train_log.jsonl"
    train(tmp_path / "b", steps=12, checkpoint_every=5, ema=0.9, stop_after=7)
    assert [h["step"] for h in lines(log)] == list(range(1, 8))  # every step, also past the checkpoint at 5
    inode = os.stat(log).st_ino
    with open(log, "a") as f:
        f.write('{"step": 8, "loss": 1.')  # a line cut by the interruption
    _, resumed = train(tmp_path / "b", steps=12, checkpoint_every=5, ema=0.9, seed=123)
    assert os.stat(log).st_ino == inode  # truncated and appended to, not replaced
    assert lines(log) == lines(tmp_path / "a" / "train_log.jsonl")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]


def test_a_checkpoint_is_safetensors_weights_beside_json_metadata_with_no_pickle_of_code(tmp_path):
    from safetensors.torch import load_file

    model, r = train(tmp_path, steps=3, ema=0.9)
    weights, meta, state = companions(r["checkpoint"])
    assert weights == tmp_path / NAME and weights.is_file() and meta.is_file() and state.is_file()
    tensors = load_file(weights)
    assert {k.split("/")[0] for k in tensors} == {"model", "ema"}
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[f"model/{k}"], v)
    info = json.loads(meta.read_text())
    assert info["model_name"] == "mdlm" and info["step"] == 3 and info["ema_state"] == {"decay": 0.9, "updates": 3}
    assert info["files"]["weights"]["sha256"] == file_hash(weights)
    training = torch.load(state, weights_only=True)
    assert set(training) == {"optimizer", "scheduler", "rng"} and training["scheduler"]["last_epoch"] == 3
    loaded, st = load_model(tmp_path)  # a run folder, the JSON or the weights: one checkpoint
    assert st["step"] == 3 and load_model(meta)[1]["step"] == 3
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, tensors[f"ema/{k}"])


def test_a_checkpoint_torn_between_two_saves_is_refused(tmp_path):
    _, r = train(tmp_path / "a", steps=2)
    train(tmp_path / "b", steps=3)
    (tmp_path / "b" / NAME).replace(tmp_path / "a" / NAME)  # weights of another save beside a's JSON
    with pytest.raises(ConfigError, match="sha256 differs"):
        load_model(r["checkpoint"])
    (tmp_path / "a" / NAME).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="corrupt"):
        read_checkpoint(tmp_path / "a")


def legacy(state: dict) -> dict:
    """The one-file checkpoint dict the trainer wrote before (numpy RNG arrays, no scheduler)."""
    old = {k: v for k, v in state.items() if k not in ("format", "files", "scheduler")}
    old["rng"] = [dict(r, numpy=(r["numpy"][0], r["numpy"][1].numpy().astype(np.uint32), *r["numpy"][2:]))
                  for r in state["rng"]]
    return old


def test_an_old_pt_checkpoint_still_loads_and_resumes_exactly(tmp_path):
    _, full = train(tmp_path / "a", steps=10, checkpoint_every=4, ema=0.9)
    train(tmp_path / "b", steps=10, checkpoint_every=4, ema=0.9, stop_after=6)
    new = tmp_path / "b" / NAME
    torch.save(legacy(read_checkpoint(new, training_state=True)), tmp_path / "b" / LEGACY_NAME)
    for p in companions(new):
        p.unlink()
    model, state = load_model(tmp_path / "b" / LEGACY_NAME)
    assert state["step"] == 4 and isinstance(state["rng"][0]["numpy"][1], np.ndarray)
    _, resumed = train(tmp_path / "b", steps=10, checkpoint_every=4, ema=0.9, seed=7)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in full["history"]]
    a, b = load_model(tmp_path / "a")[0], load_model(tmp_path / "b" / NAME)[0]
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


class Foreign:  # a class an old pickle may name: weights_only refuses it
    pass


def test_an_old_checkpoint_weights_only_refuses_says_how_to_convert_and_converts(tmp_path):
    corpus = synthetic()
    model = registry.build("ar", preset="smoke", **corpus.model_fields())
    old = tmp_path / LEGACY_NAME
    torch.save(dict(model_name="ar", model_config=model.config.to_dict(), model=model.state_dict(), ema=None,
                    corpus=corpus.spec(), metrics={}, extra=Foreign()), old)
    with pytest.raises(ConfigError, match=r"python -m esolm\.checkpoint .*checkpoint\.pt"):
        load_model(old)
    path = convert_legacy(old)
    assert path == tmp_path / NAME
    loaded, state = load_model(path)
    assert state["extra"] is None and read_checkpoint(path, training_state=True).get("rng") is None
    for (k, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), k
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="corrupt"):
        load_model(tmp_path / "junk.pt")


def test_save_and_read_a_checkpoint_dict_round_trip(tmp_path):
    corpus = synthetic()
    model = registry.build("ar", preset="smoke", **corpus.model_fields())
    path = save_checkpoint(tmp_path / "ar.safetensors", dict(model_name="ar", model_config=model.config.to_dict(),
                                                             model=model.state_dict(), ema=None, corpus=corpus.spec(),
                                                             metrics={"test_ppl": 4.5}))
    assert not companions(path)[2].exists()  # no training state: no optimizer file
    state = read_checkpoint(path)
    assert state["metrics"] == {"test_ppl": 4.5} and state["ema"] is None and state["corpus"] == corpus.spec()


def test_the_content_hash_is_sha256_of_the_bytes_in_order(tmp_path):
    assert content_hash(b"ab") == content_hash([b"a", "b"]) == hashlib.sha256(b"ab").hexdigest()
    assert content_hash("h\u00e9") == hashlib.sha256("h\u00e9".encode()).hexdigest()
    p = atomic_write_json(tmp_path / "x.json", {"b": 1, "a": torch.tensor(2)})
    assert json.loads(p.read_text()) == {"a": 2, "b": 1} and file_hash(p) == content_hash(p.read_bytes())


def test_atomic_write_files_leaves_the_old_files_and_no_temporary_when_a_write_fails(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    atomic_write_files([(a, b"old a"), (b, b"old b")])

    def boom(f):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_files([(a, b"new a"), (b, boom)])
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
