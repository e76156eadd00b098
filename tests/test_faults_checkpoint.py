"""Faults of training and its checkpoints (issue 26, items 1, 5 and 9): a save interrupted at every
file operation still leaves a checkpoint to resume from, and the resumed run ends exactly as an
uninterrupted one; non-finite settings and a diverging loss are refused without a NaN checkpoint;
an unusable --device, and steps= below the checkpoint's step, are one clear line."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import esolm.checkpoint as C
import esolm.io as esolm_io
import esolm.train as T
from esolm import registry
from esolm.checkpoint import NAME, companions, previous, read_checkpoint, save_checkpoint
from esolm.config import ConfigError
from esolm.data import load_corpus
from esolm.train import fit, seed_everything, train_config
from faults import Finished, one_error, one_warning
from faults import in_process as cli

STEPS, FAULT_STEP = 4, 3  # the save of step 3 is interrupted; step 2's checkpoint is the one before it
SEED = train_config("smoke").seed
SMOKE = ["--model", "mdlm", "--preset", "smoke", "--corpus", "synthetic", "--no-progress", "length=16"]


# ------------------------------------------------------------------ fault injection
class Interrupter:
    """Counts the file operations of one save (the temporary writes, links, renames and removals of
    esolm/checkpoint.py) and raises KeyboardInterrupt at the ``k``-th: before it runs, or just after it
    ran (``after``), as a Ctrl-C or a kill between two operations would."""

    def __init__(self, monkeypatch, k: int | None = None, after: bool = False):
        self.k, self.after, self.calls, self.armed = k, after, 0, False
        for owner, name in ((os, "replace"), (os, "link"), (os, "unlink"), (esolm_io, "_temp_beside")):
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))
        real_save = T.save_checkpoint

        def save(path, state):
            self.armed = state["step"] == FAULT_STEP
            try:
                return real_save(path, state)
            finally:
                self.armed = False

        monkeypatch.setattr(T, "save_checkpoint", save)

    def _wrap(self, op):
        def wrapped(*args, **kwargs):
            if not self.armed:
                return op(*args, **kwargs)
            self.calls += 1
            if self.calls == self.k and not self.after:
                raise KeyboardInterrupt
            result = op(*args, **kwargs)
            if self.calls == self.k:
                raise KeyboardInterrupt
            return result

        return wrapped


def _train(out: Path, seed: int, log=None):
    corpus = load_corpus("synthetic", length=16)
    cfg = train_config("smoke", steps=STEPS, checkpoint_every=1, ema=0.9, eval_every=0)
    seed_everything(seed)  # a fresh process: other RNG states and initial weights than the first run's
    model = registry.build("mdlm", preset="smoke", **corpus.model_fields())
    return fit("mdlm", model, corpus, cfg, out, progress=False, log=log or (lambda *a: None))


def _log_lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its checkpoint, log and losses."""
    out = tmp_path_factory.mktemp("reference")
    result = _train(out, seed=SEED)
    return read_checkpoint(out, training_state=True), _log_lines(out / "train_log.jsonl"), result["history"]


def test_one_save_is_a_known_number_of_file_operations(tmp_path, monkeypatch):
    counter = Interrupter(monkeypatch)
    _train(tmp_path, seed=SEED)
    assert counter.calls == 12  # 3 temporaries, 3 links to X.prev, 3 renames, 3 removals of X.prev


def _resumed(out: Path, k: int, reference) -> tuple[int, bool]:
    """Rerun the interrupted run in ``out`` as a fresh process would; check that it resumed once, from
    step 2 or 3, and ended with the reference's weights, optimizer state, log and losses, leaving no
    previous set or temporary behind. (the step it resumed from, whether it said it took X.prev)"""
    ref_state, ref_log, ref_history = reference
    lines = []
    result = _train(out, seed=1000 + k, log=lines.append)
    resuming = [ln for ln in lines if ln.startswith("resuming")]
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(resuming) == 1 and len(warnings) <= 1, (k, lines)
    assert all("torn by an interrupted save" in w for w in warnings), (k, lines)
    step = int(resuming[0].split(" at step ")[1].split("/")[0])
    assert step in (FAULT_STEP - 1, FAULT_STEP), (k, lines)
    assert result["finished"] and [h["loss"] for h in result["history"]] == [h["loss"] for h in ref_history]
    state = read_checkpoint(out, training_state=True)
    for key in ("model", "ema"):
        assert all(torch.equal(state[key][n], t) for n, t in ref_state[key].items()), (k, key)
    ref_opt, opt = ref_state["optimizer"]["state"], state["optimizer"]["state"]
    assert opt.keys() == ref_opt.keys()
    assert all(torch.equal(opt[i][n], v) for i, s in ref_opt.items() for n, v in s.items()), k
    assert _log_lines(out / "train_log.jsonl") == ref_log, k
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp") or ".prev." in p.name)
    assert left == [], (k, left)
    return step, bool(warnings)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
def test_a_save_interrupted_at_every_file_operation_resumes_and_ends_as_an_uninterrupted_run(
        tmp_path, monkeypatch, reference, after):
    """For every k: KeyboardInterrupt at the k-th file operation of the save of step 3 (before it runs,
    or right after); the rerun resumes from a complete checkpoint (step 2, or 3 once every rename is
    done), saying in one warning line when it had to take the previous set, and ends with the same
    weights, optimizer state, log and losses as the run that was never interrupted."""
    resumed_from = set()
    for k in range(1, 13):
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
            Interrupter(patched, k, after)
            _train(out, seed=SEED)
        resumed_from.add(_resumed(out, k, reference))
    # the sweep met each case: the old set untouched, a torn set read from X.prev, the new set complete
    assert {(2, False), (2, True), (3, False)} <= resumed_from, resumed_from


def test_a_torn_checkpoint_without_a_previous_set_is_still_refused(tmp_path):
    """Only a complete set is ever read: a torn X with no complete X.prev is the corrupt-checkpoint error."""
    _train(tmp_path, seed=1)
    weights, meta, _ = companions(tmp_path / NAME)
    state = read_checkpoint(tmp_path, training_state=True)
    state["step"], state["model"] = 99, {k: v + 1 for k, v in state["model"].items()}
    save_checkpoint(tmp_path / "other.safetensors", state)
    (tmp_path / "other.json").replace(meta)  # the JSON of another save beside these weights
    with pytest.raises(ConfigError, match="sha256 differs"):
        read_checkpoint(tmp_path)
    (tmp_path / "other.safetensors").replace(previous(weights)[0])  # X.prev without its companions
    with pytest.raises(ConfigError, match="sha256 differs"):
        read_checkpoint(tmp_path)


def test_stray_temporaries_of_a_killed_save_are_removed_by_the_next(tmp_path):
    _train(tmp_path, seed=1)
    state = read_checkpoint(tmp_path, training_state=True)
    strays = [tmp_path / f".{NAME}.0123456789ab.tmp", tmp_path / ".checkpoint.json.ba9876543210.tmp"]
    for p in strays:
        p.write_bytes(b"half a file")
    keep = tmp_path / ".train_log.jsonl.0123456789ab.tmp"  # not a checkpoint's: left alone
    keep.write_bytes(b"x")
    save_checkpoint(tmp_path / NAME, state)
    assert not any(p.exists() for p in strays) and keep.exists()
    assert read_checkpoint(tmp_path)["step"] == STEPS


def test_previous_set_is_read_where_hard_links_are_unsupported(tmp_path, monkeypatch):
    """os.link failing (a file system without hard links): X.prev is a copy, and a torn X falls back to it."""
    _train(tmp_path, seed=1)

    def no_links(src, dst):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "link", no_links)
    state = read_checkpoint(tmp_path, training_state=True)
    real_replace, renames = os.replace, []

    def interrupted_replace(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the state is new, the JSON and weights old: torn
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    state["step"], state["scheduler"] = STEPS + 1, {**state["scheduler"], "last_epoch": STEPS + 1}
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / NAME, state)
    said = []
    assert read_checkpoint(tmp_path, training_state=True, log=said.append)["step"] == STEPS
    assert len(said) == 1 and said[0].startswith("warning:") and "torn" in said[0]


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("pair, needle", [
    ("lr=inf", "lr must be a finite number > 0; got inf"),
    ("lr=nan", "lr must be a finite number > 0; got nan"),
    ("grad_clip=nan", "grad_clip must be a finite number > 0; got nan"),
    ("beta1=nan", "beta1 must be a finite number in [0, 1); got nan"),
    ("beta2=1", "beta2 must be a finite number in [0, 1); got 1"),
    ("adam_eps=nan", "adam_eps must be a finite number > 0; got nan"),
    ("weight_decay=nan", "weight_decay must be a finite number >= 0; got nan"),
    ("weight_decay=-inf", "weight_decay must be a finite number >= 0; got -inf"),
    ("ema=inf", "ema must be a finite number in [0, 1)"),
    ("min_lr_ratio=nan", "min_lr_ratio must be a finite number in [0, 1]; got nan"),
    ("dropout=inf", "dropout must be a finite number; got inf"),  # the backbone's: refused by the one parser
    ("schedule_eps=nan", "schedule_eps must be a finite number; got nan"),  # the model's
])
def test_a_non_finite_or_out_of_range_float_setting_is_refused_before_training(tmp_path, capsys, pair, needle):
    one_error(cli(capsys, "train", *SMOKE, "--out", tmp_path / "run", "steps=2", pair), needle)
    assert not (tmp_path / "run").exists()


def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """The loss of step 3 is NaN: one error line naming the step and the step-2 checkpoint kept; no
    checkpoint of NaN weights, and a rerun resumes from step 2."""
    real_loss, calls = registry.model_class("mdlm").loss, []

    def loss(self, tokens):
        out = real_loss(self, tokens)
        calls.append(1)
        if len(calls) == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(registry.model_class("mdlm"), "loss", loss)
    out = tmp_path / "run"
    line = one_error(cli(capsys, "train", *SMOKE, "--out", out, "steps=4", "checkpoint_every=1"),
                     "training loss became non-finite (nan) at step 3", "the last good checkpoint (step 2)",
                     str(out / NAME), "lower lr")
    state = read_checkpoint(out)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()), line
    assert not (out / "train_metrics.json").exists()
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_diverging_learning_rate_stops_with_one_line_and_no_nan_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    one_error(cli(capsys, "train", *SMOKE, "--out", out, "steps=6", "checkpoint_every=1", "warmup=0", "lr=1e30"),
              "became non-finite", "at step")
    if (out / NAME).exists():
        state = read_checkpoint(out)
        assert all(torch.isfinite(v).all() for v in state["model"].values())
        assert math.isfinite(state["metrics"]["train_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("flag, needle", [("--device", "CUDA is not available"), ("device=", "CUDA is not available")])
def test_train_on_cuda_without_cuda_fails_up_front(tmp_path, capsys, flag, needle):
    device = ["--device", "cuda"] if flag == "--device" else ["device=cuda"]
    one_error(cli(capsys, "train", *SMOKE, "--out", tmp_path / "run", "steps=2", *device), needle)
    assert not (tmp_path / "run").exists()


def test_train_on_a_device_that_does_not_exist_fails_up_front(tmp_path, capsys):
    one_error(cli(capsys, "train", *SMOKE, "--out", tmp_path / "run", "steps=2", "--device", "nosuch"),
              "device='nosuch' is not a device", "cpu")
    one_error(cli(capsys, "train", *SMOKE, "--out", tmp_path / "run", "steps=2", "device=meta"),
              "device=meta is not usable on this machine")
    one_error(cli(capsys, "train", *SMOKE, "--out", tmp_path / "run", "steps=2", "--device", "cuda:0", "device=cpu"),
              "--device cuda:0 and device=cpu disagree")
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def trained(tmp_path, capsys):
    """A finished 3-step run of the smoke model (its folder)."""
    out = tmp_path / "run"
    assert cli(capsys, "train", *SMOKE, "--out", out, "steps=3").returncode == 0
    return out


def test_fewer_steps_than_the_checkpoint_holds_is_refused_and_the_run_kept(trained, capsys):
    kept = Finished(trained)
    one_error(cli(capsys, "train", *SMOKE, "--out", trained, "steps=2"),
              "checkpoint at step 3, past steps=2", "steps=3 or more", "another --out", kept=kept)


def test_rerunning_a_finished_run_keeps_its_metrics(trained, capsys):
    kept = Finished(trained)
    proc = cli(capsys, "train", *SMOKE, "--out", trained, "steps=3")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert not kept.lost()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_sample_on_cuda_without_cuda_is_one_clear_line(trained, capsys):
    one_error(cli(capsys, "sample", "--checkpoint", trained / NAME, "--device", "cuda", "--num-samples", "2",
                  "--out", trained / "s.jsonl"), "CUDA is not available", "cpu")
    assert not (trained / "s.jsonl").exists()


def test_the_cli_resumes_a_torn_checkpoint_from_the_previous_one_with_one_warning(tmp_path, capsys, monkeypatch):
    """Ctrl-C between the renames of step 3's save (state and JSON new, weights old): the rerun says in
    one warning line that it resumes the previous checkpoint (step 2), and finishes."""
    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        Interrupter(patched, k=8, after=True)  # just after the 2nd rename: state and JSON of step 3, weights of step 2
        proc = cli(capsys, "train", *SMOKE, "--out", out, f"steps={STEPS}", "checkpoint_every=1")
    assert proc.returncode == 130, proc.stderr
    with pytest.raises(ConfigError, match="sha256 differs"):
        C._read_set(out / NAME, True)  # torn indeed
    proc = cli(capsys, "train", *SMOKE, "--out", out, f"steps={STEPS}", "checkpoint_every=1")
    one_warning(proc, "torn by an interrupted save", str(previous(out / NAME)[0]), "step 2")
    assert "resuming" in proc.stderr and f"at step 2/{STEPS}" in proc.stderr
    assert read_checkpoint(out)["step"] == STEPS and not previous(out / NAME)[0].exists()
