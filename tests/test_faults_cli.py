"""Faults a new user meets at the command line (issue 26, items 7 and 9): an interrupted or huge
`sample`, a corrupt data cache, a binary text corpus, the offline zero-shot advice, a full disk,
a bad model setting, Ctrl-C while starting. Each ends in one `error:` line and a non-zero exit,
with no traceback, and no finished sample is lost or overwritten."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import faults
import pytest

from esolm import registry
from esolm import samples as S
from esolm.data import load_corpus
from esolm.train import fit, seed_everything, train_config
from experiments import run

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *args) -> tuple[int, str]:
    proc = faults.in_process(capsys, *args)
    return proc.returncode, proc.stderr


def one_error(rc: int, err: str, *needles, code=2) -> str:
    return faults.one_error(subprocess.CompletedProcess([], rc, "", err), *needles, code=code)


def records(path: Path) -> list[dict]:
    """The samples of a JSONL without their timings (the one field that differs between runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    corpus = load_corpus("synthetic", length=16)
    cfg = train_config("smoke", steps=2)
    seed_everything(cfg.seed)
    model = registry.build("mdlm", preset="smoke", **corpus.model_fields())
    folder = tmp_path_factory.mktemp("mdlm")
    fit("mdlm", model, corpus, cfg, folder, progress=False)
    return folder / "checkpoint.safetensors"


def sample_args(ckpt: Path, out: Path, *extra):
    return ("sample", "--checkpoint", ckpt, "--num-samples", 10, "--out", out, "batch_size=3", "steps=4", "seed=5",
            *extra)


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "samples.jsonl"
    assert run.main([str(a) for a in sample_args(checkpoint, out)]) == 0
    return out


def interrupt_after(monkeypatch, k: int) -> None:
    """Ctrl-C while the (k+1)-th batch is being drawn (a KeyboardInterrupt injected, not timed)."""
    real = S.sample_batches

    def batches(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == k:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(S, "sample_batches", batches)


# ----------------------------------------------------------------------------- streaming samples
def test_an_interrupted_sample_keeps_its_batches_and_a_rerun_equals_an_uninterrupted_run(
        checkpoint, uninterrupted, tmp_path, capsys, monkeypatch):
    out = tmp_path / "samples.jsonl"
    interrupt_after(monkeypatch, 2)
    rc, err = cli(capsys, *sample_args(checkpoint, out))
    one_error(rc, err, "interrupted", "finished results are kept", code=130)
    assert "6 of 10 samples are in" in err
    assert records(out) == records(uninterrupted)[:6]  # two batches of 3, flushed as they finished
    assert S.incomplete_note(out) is not None
    with open(out, "ab") as f:  # a torn last line, as a crash mid-write leaves it
        f.write(b'{"text": "half a li')
    monkeypatch.undo()
    rc, err = cli(capsys, *sample_args(checkpoint, out))
    assert rc == 0, err
    assert "continuing" in err and "6 of 10" in err
    assert records(out) == records(uninterrupted)
    assert S.incomplete_note(out) is None


def test_an_unfinished_samples_file_is_not_scored(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "samples.jsonl"
    interrupt_after(monkeypatch, 1)
    rc, _ = cli(capsys, *sample_args(checkpoint, out))
    assert rc == 130
    rc, err = cli(capsys, "score", out, "--evaluator", "source", "--no-mauve")
    one_error(rc, err, str(out), "unfinished", "3 of 10", "rerun")


def test_the_default_output_names_the_count_so_another_count_is_another_file(checkpoint, capsys):
    """Without --out the file name holds seed and count: a second call asking for more samples
    writes a new file instead of meeting the refusal of a file of another configuration."""
    folder = checkpoint.parent / "samples"
    for n in (2, 3):
        rc, err = cli(capsys, "sample", "--checkpoint", checkpoint, "--num-samples", n, "steps=4", "seed=7")
        assert rc == 0, err[-2000:]
    made = sorted(p.name for p in folder.glob("samples-*seed7-n*.jsonl"))
    assert made == ["samples-steps4-seed7-n2.jsonl", "samples-steps4-seed7-n3.jsonl"], made
    assert [len((folder / m).read_text().splitlines()) for m in made] == [2, 3]


def test_rerunning_a_finished_sample_draws_nothing_and_keeps_the_file(checkpoint, uninterrupted, capsys):
    before = uninterrupted.read_bytes()
    rc, err = cli(capsys, *sample_args(checkpoint, uninterrupted))
    assert rc == 0 and "nothing to draw" in err
    assert uninterrupted.read_bytes() == before


def test_a_samples_file_deleted_to_sample_again_is_drawn_afresh(checkpoint, uninterrupted, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert cli(capsys, *sample_args(checkpoint, out))[0] == 0
    out.unlink()  # what the refusal says to do; its finished progress file stays behind
    rc, err = cli(capsys, *sample_args(checkpoint, out, "seed=6"))
    assert rc == 0, err
    assert len(records(out)) == 10 and records(out) != records(uninterrupted)


@pytest.mark.parametrize("change", [("seed=6",), ("steps=3",), ("--num-samples", "12")])
def test_a_samples_file_of_another_configuration_is_refused_not_overwritten(checkpoint, uninterrupted, capsys,
                                                                           change):
    before = uninterrupted.read_bytes()
    rc, err = cli(capsys, *sample_args(checkpoint, uninterrupted, *change))
    one_error(rc, err, str(uninterrupted), "--out elsewhere", "delete it")
    assert uninterrupted.read_bytes() == before


def test_an_unfinished_file_of_another_configuration_is_refused(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "samples.jsonl"
    interrupt_after(monkeypatch, 1)
    assert cli(capsys, *sample_args(checkpoint, out))[0] == 130
    monkeypatch.undo()
    before = out.read_bytes()
    rc, err = cli(capsys, *sample_args(checkpoint, out, "seed=6"))
    one_error(rc, err, "another configuration", "seed")
    assert out.read_bytes() == before


def test_a_file_that_is_not_samples_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "notes.jsonl"
    out.write_text("my notes\n")
    rc, err = cli(capsys, *sample_args(checkpoint, out))
    one_error(rc, err, str(out), "not JSON")
    assert out.read_text() == "my notes\n"


def test_streamed_samples_equal_the_pipeline_draw(checkpoint, uninterrupted):
    """`run.py sample` and the pipeline's sample job (draw_samples) give the same samples."""
    from esolm.checkpoint import load_model
    from esolm.data import corpus_from_spec

    model, state = load_model(checkpoint)
    corpus = corpus_from_spec(state["corpus"])
    drawn = S.draw_samples(model, corpus, num_samples=10, batch_size=3, seed=5, options=dict(steps=4),
                           model_name=state["model_name"], model_config=state["model_config"],
                           corpus_spec=state["corpus"], checkpoint=str(checkpoint))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in drawn] == records(uninterrupted)


def test_a_246_character_output_name_works(checkpoint, tmp_path, capsys):
    out = tmp_path / ("s" * 240 + ".jsonl")
    rc, err = cli(capsys, *sample_args(checkpoint, out))
    assert rc == 0, err
    assert len(records(out)) == 10
    assert all(len(os.fsencode(p.name)) <= 255 for p in tmp_path.iterdir())


def test_a_billion_samples_are_refused_up_front_by_their_size(checkpoint, tmp_path, capsys):
    out = tmp_path / "huge.jsonl"
    rc, err = cli(capsys, "sample", "--checkpoint", checkpoint, "--num-samples", 1_000_000_000, "--out", out)
    one_error(rc, err, "1000000000 samples", "free", "--num-samples")
    assert not out.exists() and not S.progress_path(out).exists()


def test_the_size_estimate_is_printed_before_sampling(checkpoint, tmp_path, capsys):
    rc, err = cli(capsys, *sample_args(checkpoint, tmp_path / "s.jsonl"))
    assert rc == 0
    estimate = next(ln for ln in err.splitlines() if "for 10 samples" in ln)
    assert err.index(estimate) < err.index("1" + "0/10 samples")  # before the last batch
    assert "more for the other 3 batches" in err


# ----------------------------------------------------------------------------- a full disk
def disk_full_for(monkeypatch, ending: str) -> None:
    """fsync of a file whose name ends in ``ending`` fails as on a full disk (no file name in the error)."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(ending):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_sampling_names_the_samples_file(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.jsonl"
    disk_full_for(monkeypatch, "/s.jsonl")
    rc, err = cli(capsys, *sample_args(checkpoint, out))
    one_error(rc, err, "disk is full", str(out))


def test_a_full_disk_in_an_atomic_write_names_the_file_it_was_writing(checkpoint, capsys, monkeypatch):
    disk_full_for(monkeypatch, ".tmp")
    rc, err = cli(capsys, "eval", "--checkpoint", checkpoint, "--no-progress", "max_batches=1", "batch_size=2")
    one_error(rc, err, "disk is full", str(checkpoint.parent / "eval_test_first2.json"))
    assert not list(checkpoint.parent.glob("eval_test*.json"))


# ----------------------------------------------------------------------------- a bad model setting
@pytest.mark.parametrize("setting", ["alpha_0=7", "batch_split=2"])
def test_a_bad_model_setting_is_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch, setting):
    from experiments.runspec import RunSpec

    def no_data(self):
        raise AssertionError("the corpus was loaded before the model's settings were checked")

    monkeypatch.setattr(RunSpec, "load_corpus", no_data)
    rc, err = cli(capsys, "train", "--model", "esolm-b", "--preset", "smoke", "--out", tmp_path / "run", setting)
    one_error(rc, err, setting.split("=")[0])
    assert not (tmp_path / "run").exists()


def test_a_block_size_that_does_not_divide_the_length_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    from experiments.runspec import RunSpec

    monkeypatch.setattr(RunSpec, "load_corpus", lambda self: pytest.fail("corpus loaded first"))
    rc, err = cli(capsys, "train", "--model", "bd3lm", "--preset", "smoke", "--out", tmp_path, "block_size=5")
    one_error(rc, err, "block_size=5", "length=32")


# ----------------------------------------------------------------------------- Ctrl-C while starting
def test_ctrl_c_while_python_imports_torch_is_one_line_and_exit_130():
    """SIGINT delivered while `run.py` imports torch (an import hook sends it: no timing)."""
    code = (
        "import os, runpy, signal, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        f"sys.argv = ['run.py', 'models']\n"
        f"runpy.run_path({str(ROOT / 'experiments' / 'run.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    one_error(proc.returncode, proc.stderr, "interrupted while starting", code=130)
    assert proc.stdout == ""


def test_ctrl_c_while_parsing_the_command_line_is_one_line(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "parser", interrupted)
    rc, err = cli(capsys, "models")
    one_error(rc, err, "interrupted while starting", code=130)


# ----------------------------------------------------------------------------- data: binary corpora
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256)) * 8


@pytest.mark.parametrize("content", [PNG, bytes(range(128, 256)) * 64], ids=["png", "invalid-utf8"])
def test_a_binary_file_is_refused_as_a_text_corpus(tmp_path, capsys, content):
    path = tmp_path / "picture.png"
    path.write_bytes(content)
    rc, err = cli(capsys, "train", "--model", "ar", "--preset", "smoke", "--corpus", f"text:{path}",
                  "--out", tmp_path / "run")
    one_error(rc, err, str(path), "not a text file", "text:PATH")
    assert not (tmp_path / "run").exists()


def test_a_binary_txt_file_in_a_corpus_folder_is_named(tmp_path):
    from esolm.config import ConfigError

    (tmp_path / "a.txt").write_text("some text\n" * 50)
    (tmp_path / "b.txt").write_bytes(PNG)
    with pytest.raises(ConfigError, match="b.txt is not a text file"):
        load_corpus(f"text:{tmp_path}", length=16)


def test_a_text_file_with_a_stray_bad_byte_is_still_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(("a line of ordinary text\n" * 200).encode() + b"caf\xe9\n")
    corpus = load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=tmp_path / "cache")
    assert corpus.splits["train"].shape[1] == 16


# ----------------------------------------------------------------------------- data: a corrupt cache
TEXT = "".join(f"line {i} of a small corpus, with some words in it\n" for i in range(400))


@pytest.fixture
def text_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    cache = tmp_path / "cache"
    corpus = load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=cache)
    return path, cache, corpus


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-shape"])
def test_a_corrupt_cached_split_is_named_and_rebuilt(text_corpus, capsys, damage):
    import numpy as np

    path, cache, corpus = text_corpus
    capsys.readouterr()
    (train,) = cache.glob("corpora/*/train.npy")
    if damage == "truncate":
        train.write_bytes(train.read_bytes()[:100])
    elif damage == "garbage":
        train.write_bytes(os.urandom(1000))
    else:
        np.save(train, np.zeros((3, 5), np.uint16))
    again = load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=cache)
    err = capsys.readouterr().err
    assert f"the cached corpus {train.parent}" in err and "train.npy" in err and "rebuilding it" in err
    assert "Traceback" not in err
    assert all((again.splits[s] == corpus.splits[s]).all() for s in corpus.splits)
    load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=cache)
    assert "corrupt" not in capsys.readouterr().err  # rebuilt once, read back from then on


def test_a_corrupt_cached_meta_json_is_named_and_rebuilt(text_corpus, capsys):
    path, cache, corpus = text_corpus
    (meta,) = cache.glob("corpora/*/meta.json")
    meta.write_text('{"format_version": 1, "sha')
    capsys.readouterr()
    again = load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=cache)
    err = capsys.readouterr().err
    assert "meta.json" in err and "rebuilding it" in err
    assert (again.splits["test"] == corpus.splits["test"]).all()


def test_a_corrupt_cached_tokenizer_is_named_and_trained_again(text_corpus, capsys):
    path, cache, corpus = text_corpus
    (tok,) = cache.glob("tokenizers/bpe*.json")
    tok.write_text(tok.read_text()[:500])
    for folder in cache.glob("corpora/*"):  # the packed ids too, so the tokenizer is needed again
        for f in folder.iterdir():
            f.unlink()
    capsys.readouterr()
    again = load_corpus(f"text:{path}", length=16, vocab_size=300, cache_dir=cache)
    err = capsys.readouterr().err
    assert f"the cached tokenizer {tok}" in err and "rebuilding it" in err
    assert again.tokenizer.fingerprint == corpus.tokenizer.fingerprint
    assert (again.splits["train"] == corpus.splits["train"]).all()


def test_a_corrupt_cached_tokenizer_loaded_by_name_says_to_delete_it(text_corpus):
    from esolm.config import ConfigError
    from esolm.data import load_tokenizer

    _, cache, corpus = text_corpus
    (tok,) = cache.glob("tokenizers/bpe*.json")
    tok.write_bytes(b"\0garbage")
    with pytest.raises(ConfigError, match=f"the cached tokenizer {tok} is corrupt.*delete it"):
        load_tokenizer(corpus.tokenizer.name, cache)


# ----------------------------------------------------------------------------- data: zero-shot offline
def test_the_offline_zero_shot_error_names_what_a_command_accepts(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ESOLM_ZEROSHOT", raising=False)
    rc, err = cli(capsys, "train", "--model", "mdlm", "--preset", "smoke", "--corpus", "zeroshot:ptb",
                  "--out", tmp_path / "run")
    line = one_error(rc, err, "ptb_text_only")
    assert "ESOLM_ZEROSHOT" in err and "pass data_dir=zeroshot" not in err, line


def test_esolm_zeroshot_is_the_data_dir_of_the_zero_shot_corpora(tmp_path, monkeypatch):
    (tmp_path / "ptb.jsonl").write_text("".join(json.dumps({"sentence": f"s{i % 40} s{i % 7} s3"}) + "\n"
                                                for i in range(40)))
    monkeypatch.setenv("ESOLM_ZEROSHOT", str(tmp_path))
    corpus = load_corpus("zeroshot:ptb", length=8, tokenizer="synthetic-48")
    assert corpus.spec()["data_dir"] == str(tmp_path) and len(corpus.splits["test"]) >= 1
    (tmp_path / "ptb.jsonl").write_text("not json\n")
    from esolm.config import ConfigError

    with pytest.raises(ConfigError, match="ptb.jsonl line 1 is not JSON"):
        load_corpus("zeroshot:ptb", length=8, tokenizer="synthetic-48")
