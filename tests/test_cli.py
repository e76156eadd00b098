"""The command line end to end on the smallest settings: train -> eval -> sample -> score."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esolm import registry

ROOT = Path(__file__).resolve().parent.parent


def run(*args, ok=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_models_lists_every_registered_model_with_capabilities():
    out = run("models").stdout
    from esolm import registry

    for name in registry.available():
        assert name in out
    assert "kv_cache" in out and "exact_likelihood" in out


def test_help_lists_every_key_of_the_run_config_with_its_default_type_and_meaning():
    from esolm import runs
    from esolm.config import field_names

    out = run("train", "--help").stdout
    tiny = runs.get("tiny")
    for section in ("data", "backbone", "train"):
        for name in field_names(type(getattr(tiny, section))):
            assert f"{section}.{name}=" in out, f"{section}.{name}"
    assert "train.steps=300  (int) optimizer steps" in out  # the field's own line comment
    assert "model: the model's config fields" in out


def test_alpha_0_outside_0_1_is_refused_with_one_message(tmp_path):
    proc = run("train", "--model", "esolm-b", "--corpus", "synthetic", "--preset", "smoke", "--out", str(tmp_path),
               "alpha_0=2", ok=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "alpha_0" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_a_block_size_that_does_not_divide_the_length_is_refused(tmp_path):
    proc = run("train", "--model", "bd3lm", "--corpus", "synthetic", "--preset", "smoke", "--out", str(tmp_path),
               "block_size=5", "length=32", ok=False)
    assert proc.returncode == 2 and "block_size" in proc.stderr and "Traceback" not in proc.stderr


def test_train_eval_sample_score_round_trip_for_esolm(tmp_path):
    out = tmp_path / "run"
    run("train", "--model", "esolm-b", "--corpus", "synthetic", "--preset", "smoke", "--out", str(out),
        "--no-progress", "alpha_0=0.5", "steps=6", "length=16")
    assert (out / "checkpoint.safetensors").exists() and (out / "train_log.jsonl").exists()
    ev = run("eval", "--checkpoint", str(out / "checkpoint.safetensors"), "--exact", "num_orders=2", "--no-progress")
    assert "exact NLL" in ev.stdout and "true NLL of the source" in ev.stdout
    result = json.loads((out / "eval_test_exact_K2.json").read_text())
    assert result["nll_per_token"] >= result["true_nll_per_token"]
    samples = tmp_path / "s.jsonl"
    run("sample", "--checkpoint", str(out / "checkpoint.safetensors"), "--num-samples", "4", "--out", str(samples),
        "steps=4", "alpha_0_eval=0.5", "top_p=0.9", "seed=3")
    recs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(recs) == 4
    for r in recs:
        assert {"text", "tokens", "nfe", "seconds", "model", "config"} <= set(r)
        assert r["model"] == "esolm-b" and len(r["tokens"]) == 16 and r["options"]["alpha_0_eval"] == 0.5
    scored = run("score", str(samples), "--evaluator", "source", "--no-mauve")
    metrics = json.loads(samples.with_suffix(".metrics.json").read_text())
    assert metrics["gen_ppl"]["gen_ppl"] > 1 and "entropy" in metrics
    assert "gen_ppl" in scored.stdout


def test_sample_option_unknown_to_the_model_is_refused(tmp_path):
    out = tmp_path / "run"
    run("train", "--model", "ar", "--corpus", "synthetic", "--preset", "smoke", "--out", str(out), "--no-progress",
        "steps=2", "length=16")
    proc = run("sample", "--checkpoint", str(out / "checkpoint.safetensors"), "alpha_0_eval=0.5", ok=False)
    assert proc.returncode == 2 and "alpha_0_eval" in proc.stderr and "valid" in proc.stderr
    # a known option with a value the model refuses: one error before any file is written
    for bad, word in (("steps=0", "steps"), ("top_p=2", "top_p")):
        proc = run("sample", "--checkpoint", str(out / "checkpoint.safetensors"), bad, ok=False)
        assert proc.returncode == 2 and word in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "samples").exists() or not any((out / "samples").iterdir())


@pytest.mark.parametrize("name", registry.available())
def test_sample_options_from_the_command_line_get_the_types_of_the_interface(name):
    """steps=16 on the command line is the int 16 for every model, also where an override of
    sample() leaves ``steps`` unannotated (the base class's annotation applies)."""
    from esolm.interface import sample_options
    model = registry.build(name, preset="smoke")
    opts = sample_options(model, {"steps": "16", "top_p": "0.9", "kv_cache": "false"})
    assert opts == {"steps": 16, "top_p": 0.9, "kv_cache": False}
    assert type(opts["steps"]) is int
