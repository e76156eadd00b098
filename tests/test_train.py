"""Training end to end: the entropy floor on `synthetic`, exact resumption, DDP, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faults import cli as run_cli
from faults import one_error

from esolm import registry
from esolm.checkpoint import load_model
from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.evaluate import evaluate
from esolm.train import fit, seed_everything, train_config

ROOT = Path(__file__).resolve().parent.parent


def synthetic(length=32):
    return load_corpus("synthetic", length=length)


def train(name, corpus, out, steps, **overrides):
    cfg = train_config("smoke", steps=steps, **overrides)
    seed_everything(cfg.seed)
    model = registry.build(name, preset="smoke", **corpus.model_fields())
    return model, fit(name, model, corpus, cfg, out, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_trained_model_falls_far_below_uniform_and_never_below_true_entropy(name, tmp_path):
    """AR and MDLM trained for about a minute on `synthetic`: test NLL far below the uniform
    ln(V - 1) and never below the exact entropy of the source (the floor)."""
    import math

    corpus = synthetic()
    model, _ = train(name, corpus, tmp_path, steps=300, batch_size=32, lr=3e-3, warmup=20, ema=0.9)
    model, _ = load_model(tmp_path / "checkpoint.safetensors")
    r = evaluate(model, corpus, "test", batch_size=64, progress=False)
    uniform = math.log(corpus.tokenizer.vocab_size - 1)
    floor = r["true_nll_per_token"]
    assert r["nll_per_token"] < floor + 0.5 * (uniform - floor), (r, uniform)
    assert r["nll_per_token"] >= floor, (r["nll_per_token"], floor)


def test_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path):
    """Kill after 7 of 20 steps (checkpoint every 5), rerun: the same losses, step for step."""
    corpus = synthetic(16)
    _, full = train("mdlm", corpus, tmp_path / "a", steps=20, checkpoint_every=5, ema=0.9)
    cfg = train_config("smoke", steps=20, checkpoint_every=5, ema=0.9)
    seed_everything(cfg.seed)
    model = registry.build("mdlm", preset="smoke", **corpus.model_fields())
    fit("mdlm", model, corpus, cfg, tmp_path / "b", progress=False, stop_after=7)
    seed_everything(123)  # a fresh process: different RNG, different initial weights
    model = registry.build("mdlm", preset="smoke", **corpus.model_fields())
    resumed = fit("mdlm", model, corpus, cfg, tmp_path / "b", progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    a, _ = load_model(tmp_path / "a" / "checkpoint.safetensors")
    b, _ = load_model(tmp_path / "b" / "checkpoint.safetensors")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k


def test_a_run_directory_of_another_run_is_not_overwritten(tmp_path):
    corpus = synthetic(16)
    train("ar", corpus, tmp_path, steps=3)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="different run"):
        train("ar", corpus, tmp_path, steps=3, lr=5e-4)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.slow
def test_two_process_ddp_keeps_parameters_identical_across_ranks(tmp_path):
    """torchrun, 2 processes, gloo: gradients averaged over ranks; checksums compared at every
    checkpoint (the trainer raises if they diverge) and recorded."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "experiments" / "run.py"), "train", "--model", "ar", "--preset", "smoke", "--corpus",
           "synthetic", "--out", str(tmp_path), "--no-progress", "steps=6", "checkpoint_every=3", "length=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2
    sums = metrics["rank_parameter_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_cli_unknown_model_gives_one_clear_error():
    one_error(run_cli("train", "--model", "gpt5", "--corpus", "synthetic"), "unknown model", "ar", "mdlm")


def test_cli_unknown_key_lists_the_valid_ones():
    one_error(run_cli("train", "--model", "mdlm", "--corpus", "synthetic", "learning_rate=1"),
              "unknown key", "lr", "steps")


def test_cli_corrupt_checkpoint_gives_one_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    one_error(run_cli("eval", "--checkpoint", str(bad)), "corrupt", str(bad))


def test_cli_owt_offline_fails_at_once(tmp_path):
    import time

    t0 = time.perf_counter()
    proc = run_cli("train", "--model", "mdlm", "--corpus", "owt", "--out", str(tmp_path / "owt"),
                   env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    one_error(proc, "openwebtext")
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "owt" / "checkpoint.safetensors").exists()


def test_cosine_schedule_warms_up_then_falls_to_its_floor_at_the_last_step():
    from esolm.train import learning_rate

    cfg = train_config("smoke", steps=100, lr=1e-3, warmup=10, decay="cosine", min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup, then the peak
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # never rises after warmup
    assert lrs[-1] == pytest.approx(1e-4)  # min_lr_ratio * lr at the last step
    constant = train_config("smoke", steps=100, lr=1e-3, warmup=10)
    assert {learning_rate(constant, s) for s in range(10, 100)} == {1e-3}
    with pytest.raises(ConfigError, match="decay must be constant or cosine"):
        train_config("smoke", decay="linear")


def test_batch_split_keeps_the_global_batch_whatever_the_world_size():
    """batch_size is global: per-device batch x world = batch_size; micro_batch caps a forward."""
    from esolm.train import batch_split

    assert batch_split(512, 1, 64) == (512, 64, 8)
    assert batch_split(512, 8, 64) == (64, 64, 1)
    assert batch_split(512, 16, 64) == (32, 32, 1)
    assert batch_split(16, 2, 0) == (8, 8, 1)
    with pytest.raises(ConfigError, match="batch_size=16 .* not divisible by the 3 processes"):
        batch_split(16, 3)
    with pytest.raises(ConfigError, match="micro_batch=64 does not divide the per-process batch 96"):
        batch_split(96, 1, 64)


def test_init_from_starts_from_the_sources_ema_weights_then_trains_its_own_steps_from_step_0(tmp_path, monkeypatch):
    """A finetune (the paper's LM1B BD3-LMs from MDLM, spec 10): BD3-LM starts from exactly the
    EMA weights MDLM is evaluated with, at step 0 with its own steps; interrupted, it resumes from its
    own checkpoint without loading the source again."""
    from esolm import train as T
    from esolm.checkpoint import read_checkpoint

    corpus = synthetic(16)
    train("mdlm", corpus, tmp_path / "mdlm", steps=4, ema=0.9)
    source = read_checkpoint(tmp_path / "mdlm")
    assert source["ema"] is not None and any(not torch.equal(source["ema"][k], source["model"][k]) for k in source["ema"])
    cfg = train_config("smoke", steps=3, checkpoint_every=1, ema=0.9)

    def bd3():
        return registry.build("bd3lm", preset="smoke", block_size=4, **corpus.model_fields())

    model, lines = bd3(), []
    fit("bd3lm", model, corpus, cfg, tmp_path / "ft", progress=False, stop_after=0, log=lines.append,
        init_from=tmp_path / "mdlm")
    for k, v in model.state_dict().items():
        assert torch.equal(v, source["ema"][k]), k
    assert any("initialised bd3lm from the EMA weights of the mdlm checkpoint" in x and "mdlm" in x for x in lines)

    part = fit("bd3lm", bd3(), corpus, cfg, tmp_path / "ft", progress=False, stop_after=2, init_from=tmp_path / "mdlm")
    assert [h["step"] for h in part["history"]] == [1, 2]
    state = read_checkpoint(tmp_path / "ft", training_state=True)
    assert state["identity"]["init_from"] == dict(model_name="mdlm", step=4,
                                                  weights_sha256=source["files"]["weights"]["sha256"])
    assert state["metrics"]["init_from"]["weights"] == "ema" and state["step"] == 2

    def reload(run):
        raise AssertionError("a resumed finetune loaded the source again")

    monkeypatch.setattr(T, "_start_from", reload)
    done = fit("bd3lm", bd3(), corpus, cfg, tmp_path / "ft", progress=False, init_from=tmp_path / "mdlm")
    assert done["finished"] and [h["step"] for h in done["history"]] == [1, 2, 3]
    assert done["metrics"]["init_from"]["model_name"] == "mdlm"
    # a run of the same settings from scratch is another run: its folder is refused
    with pytest.raises(ConfigError, match="the checkpoint it started from"):
        fit("bd3lm", bd3(), corpus, cfg, tmp_path / "ft", progress=False)


def test_init_from_another_backbone_is_one_clear_error_naming_the_fix(tmp_path, capsys):
    """AR lacks the time conditioning MDLM, BD3-LM and Eso-LM share: BD3-LM cannot start from it."""
    from faults import in_process

    corpus = synthetic(16)
    train("ar", corpus, tmp_path / "ar", steps=1)
    model = registry.build("bd3lm", preset="smoke", block_size=4, **corpus.model_fields())
    with pytest.raises(ConfigError, match="do not fit this bd3lm model, parameters missing from it .*adaln"):
        fit("bd3lm", model, corpus, train_config("smoke", steps=2), tmp_path / "ft", progress=False,
            init_from=tmp_path / "ar")
    assert not (tmp_path / "ft").exists()
    out = tmp_path / "cli"
    one_error(in_process(capsys, "train", "--model", "bd3lm", "--preset", "smoke", "--corpus", "synthetic",
                         "--init-from", tmp_path / "ar", "--out", out, "--no-progress", "length=16", "steps=2"),
              "do not fit", "drop --init-from", code=None)
    assert not (out / "checkpoint.safetensors").exists()
