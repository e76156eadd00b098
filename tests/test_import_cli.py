"""`run.py import`, then `eval` and `sample` on the result (and straight from the authors' file
through --checkpoint); bad sources give one `error:` line and exit status 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import run

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("ESOLM_FIXTURES", Path(__file__).parent / "fixtures" / "official"))
SOURCES = {"esolm-b": "esolm-b.ckpt", "esolm-a": "esolm-a.ckpt", "mdlm": "mdlm.ckpt", "bd3lm": "bd3lm-hf"}


def cli(capsys, *args):
    rc = run.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("model", list(SOURCES))
def test_import_then_eval_and_sample_from_the_command_line(tmp_path, capsys, model):
    out = tmp_path / model
    rc, stdout, err = cli(capsys, "import", FIXTURES / SOURCES[model], "--model", model, "--out", out)
    assert rc == 0, err
    assert (out / "checkpoint.safetensors").is_file() and stdout.strip() == str(out / "checkpoint.safetensors")
    info = json.loads((out / "import.json").read_text())
    assert info["family"] == model and "load_check" in info
    assert "load check: NELBO PPL" in err and "uniform" in err  # the sanity check ran on the stand-in data
    rc, stdout, err = cli(capsys, "eval", "--checkpoint", out / "checkpoint.safetensors", "--no-progress", "max_batches=1",
                          "batch_size=8")
    assert rc == 0, err
    result = json.loads((out / "eval_test_first8.json").read_text())
    assert result["weights"] == info["weights"] and result["ppl"] > 1
    samples = tmp_path / "s.jsonl"
    rc, _, err = cli(capsys, "sample", "--checkpoint", out / "checkpoint.safetensors", "--num-samples", 2, "--out", samples,
                     "steps=8")
    assert rc == 0, err
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["tokens"]) == 16 for r in rows)


def test_eval_takes_the_authors_file_directly_and_reports_the_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "eval", "--checkpoint", FIXTURES / "esolm-b.ckpt", "--no-progress", "--exact",
                     "num_orders=2", "max_batches=1", "batch_size=4")
    assert rc == 0, err
    (result,) = list((tmp_path / "runs" / "imported").glob("esolm-b-ema-*/eval_test_first4_exact_K2.json"))
    assert json.loads(result.read_text())["weights"].startswith("ema")
    rc, _, err = cli(capsys, "eval", "--checkpoint", FIXTURES / "esolm-b.ckpt", "--no-ema", "--no-progress",
                     "max_batches=1", "batch_size=4")
    assert rc == 0, err
    (result,) = list((tmp_path / "runs" / "imported").glob("esolm-b-live-*/eval_test_first4.json"))
    assert json.loads(result.read_text())["weights"].startswith("live")


def _one_error(rc, err, *words):
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_a_truncated_checkpoint_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes((FIXTURES / "mdlm.ckpt").read_bytes()[:300_000])
    _one_error(*cli(capsys, "import", bad, "--out", tmp_path / "o")[::2], "truncated")
    folder = tmp_path / "cut-hf"
    folder.mkdir()
    (folder / "config.json").write_text((FIXTURES / "bd3lm-hf" / "config.json").read_text())
    (folder / "model.safetensors").write_bytes((FIXTURES / "bd3lm-hf" / "model.safetensors").read_bytes()[:50_000])
    _one_error(*cli(capsys, "import", folder, "--out", tmp_path / "o")[::2], "model.safetensors")
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_a_wrong_family_file_is_one_clear_error(tmp_path, capsys):
    _one_error(*cli(capsys, "import", FIXTURES / "mdlm.ckpt", "--model", "esolm-b", "--out", tmp_path / "o")[::2],
               "mdlm", "not esolm-b")
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _one_error(*cli(capsys, "import", folder, "--out", tmp_path / "o")[::2], "gpt2")


def test_an_offline_hf_source_says_what_to_download_and_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = cli(capsys, "import", "hf:kuleshov-group/bd3lm-owt-block_size4", "--out", tmp_path / "o")
    _one_error(rc, err, "huggingface-cli download kuleshov-group/bd3lm-owt-block_size4", "offline")


def test_the_error_exit_status_is_2_from_a_real_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "import", "hf:org/name",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1


def test_an_eso_lm_hub_release_imports_through_hf_and_evaluates(tmp_path, capsys, monkeypatch):
    """hf:sahoo-diffusion/Eso-LM-B-alpha-0_25 (the download answered by the esolm-b-hf fixture):
    alpha_0 from the repository name, recorded in import.json; then eval on the import."""
    asked = []
    monkeypatch.setattr("esolm.data.hub.hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr("huggingface_hub.snapshot_download",
                        lambda repo, **kw: asked.append(repo) or str(FIXTURES / "esolm-b-hf"))
    out = tmp_path / "eso-hf"
    rc, stdout, err = cli(capsys, "import", "hf:sahoo-diffusion/Eso-LM-B-alpha-0_25", "--out", out)
    assert rc == 0, err
    assert asked == ["sahoo-diffusion/Eso-LM-B-alpha-0_25"] and "alpha_0=0.25" in err
    info = json.loads((out / "import.json").read_text())
    assert info["family"] == "esolm-b" and info["weights"].startswith("published")
    assert info["alpha_0"] == {"value": 0.25, "source": "the repository name sahoo-diffusion/Eso-LM-B-alpha-0_25"}
    rc, _, err = cli(capsys, "eval", "--checkpoint", out, "--no-progress", "max_batches=1", "batch_size=4")
    assert rc == 0, err


def test_an_eso_lm_hf_folder_takes_alpha_0_from_the_option_or_is_one_clear_error(tmp_path, capsys):
    _one_error(*cli(capsys, "import", FIXTURES / "esolm-b-hf", "--out", tmp_path / "o")[::2],
               "no alpha_0", "alpha_0=A")
    assert not (tmp_path / "o").exists()
    rc, _, err = cli(capsys, "import", FIXTURES / "esolm-b-hf", "--out", tmp_path / "o", "alpha_0=1",
                     "--check-batches", 0)
    assert rc == 0, err
    info = json.loads((tmp_path / "o" / "import.json").read_text())
    assert info["alpha_0"] == {"value": 1.0, "source": "option alpha_0=1"}
