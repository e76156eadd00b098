"""Models and presets from outside the harness: built-ins as data, plugins through entry points.

A package installed with pip (tests/plugin_demo: a model and a preset under the `esolm.models`
and `esolm.presets` entry-point groups) is found by the registry and the preset list of every
process and runs through the pipeline on the local cluster and on local Slurm; adding a
built-in model, or a stage to experiments/jobs.py, stales no other job.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from esolm import registry
from esolm.config import ConfigError
from experiments import graph as G
from experiments import pipeline
from experiments import presets as P
from experiments import versions
from helpers import slurm_up

PLUGIN = Path(__file__).parent / "plugin_demo"
needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no Slurm: start it with `bash scripts/local-slurm/start.sh`")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The demo plugin installed by pip into a folder of its own (the way a user installs one)."""
    src = tmp_path_factory.mktemp("src") / "plugin_demo"
    shutil.copytree(PLUGIN, src)  # pip builds in the source folder: keep the repository clean
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True)
    return site


@pytest.fixture
def installed(plugin_site, monkeypatch):
    """The plugin on this process's path and on every worker's (PYTHONPATH: local workers and
    Slurm jobs inherit it)."""
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()
    registry.refresh()
    yield plugin_site
    registry.refresh()


def test_an_installed_plugin_adds_its_model_and_its_preset(installed):
    assert "demo-mdlm" in registry.available() and "demo-micro" in P.names()
    cls = registry.model_class("demo-mdlm")
    assert cls.__module__ == "demo_plugin.model"
    # its jobs depend on its own file (an absolute path outside the repository) and what it imports
    assert versions.model_file("demo-mdlm") == str((installed / "demo_plugin" / "model.py").resolve())
    files = versions.stage_files("job_sample", ("demo-mdlm",))
    assert str((installed / "demo_plugin" / "model.py").resolve()) in files and "baselines/mdlm.py" in files
    preset = P.get("demo-micro")
    assert [m.group for m in preset.models] == ["AR", "Demo MDLM"]  # the method from the model's Display


def test_without_the_plugin_its_names_are_unknown_with_the_fix():
    registry.refresh()
    with pytest.raises(ConfigError, match="unknown model 'demo-mdlm'.*installed"):
        registry.model_class("demo-mdlm")
    with pytest.raises(ConfigError, match="unknown experiment preset 'demo-micro'"):
        P.get("demo-micro")


def _fake_entry_points(monkeypatch, group: str, name: str, value: str):
    ep = importlib.metadata.EntryPoint(name=name, value=value, group=group)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == group else real(**kw))


@pytest.fixture
def fresh_registry():
    """The registry reads its sources again before and after the test (its caches hold them)."""
    registry.refresh()
    yield
    registry.refresh()


def test_a_plugin_may_not_shadow_a_built_in_model_or_preset(monkeypatch, fresh_registry):
    _fake_entry_points(monkeypatch, registry.ENTRY_POINT_GROUP, "mdlm", "somewhere.else:MDLM")
    with pytest.raises(ConfigError, match="shadows the built-in model 'mdlm'"):
        registry.available()
    monkeypatch.undo()
    _fake_entry_points(monkeypatch, P.PRESET_ENTRY_POINTS, "tiny", "somewhere.else:tiny")
    with pytest.raises(ConfigError, match="shadows the built-in preset 'tiny'"):
        P.names()


def test_a_malformed_registration_is_one_clear_error(tmp_path, monkeypatch, fresh_registry):
    table = tmp_path / "models.toml"
    table.write_text('[models]\nbroken = "baselines.mdlm.MDLM"\n')
    monkeypatch.setattr(registry, "BUILTIN_TABLE", table)
    with pytest.raises(ConfigError, match="must name its class as \"module:Class\""):
        registry.available()


def test_two_methods_in_one_colour_are_refused(monkeypatch):
    from baselines.mdlm import MDLM
    from esolm.interface import Display

    class Clash(MDLM):
        @classmethod
        def display(cls, config):
            return Display("Clash", "Clash", "#0173B2")  # MDLM's colour

    monkeypatch.setattr(registry, "_REGISTERED", {"clash": Clash})
    preset = P.get("smoke")
    preset.models.append(P.ModelEntry("clash", "clash", {}, []))
    with pytest.raises(ConfigError, match="Clash .* and MDLM are drawn in the same colour"):
        P.resolve_methods(preset)


def _keys(preset) -> dict[str, str]:
    return {j.name: j.key for j in G.build_graph(preset, Path("/nonexistent/work"))}


def test_adding_a_built_in_model_stales_only_its_own_jobs(tmp_path, monkeypatch):
    """A line in esolm/models.toml changes no job's key; putting the model in a preset adds its
    own jobs and changes only the shared clock (which times every configuration of the preset)."""
    before = _keys(P.get("smoke"))
    table = tmp_path / "models.toml"
    table.write_text(registry.BUILTIN_TABLE.read_text() + 'toy = "toy_model:ToyLM"\n')
    monkeypatch.setattr(registry, "BUILTIN_TABLE", table)
    registry.refresh()
    try:
        assert "toy" in registry.available()
        assert _keys(P.get("smoke")) == before
        preset = P.get("smoke")
        preset.models.append(P.ModelEntry("toy", "toy", {}, [dict(steps=1)]))
        after = _keys(preset)
    finally:
        monkeypatch.undo()
        registry.refresh()
    changed = {n for n in before if after.get(n) != before[n]}
    assert changed and all(n.startswith("time/") for n in changed), changed  # the shared clock only
    added = set(after) - set(before)
    assert added and all("toy" in n for n in added), added


def test_a_new_stage_in_jobs_py_stales_no_other_stage(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "experiments").mkdir(parents=True)
    for d in versions.LIBRARY:
        (root / d).symlink_to(versions.ROOT / d)
    jobs = (versions.ROOT / versions.JOBS).read_text()
    (root / versions.JOBS).write_text(jobs)
    monkeypatch.setattr(versions, "ROOT", root)
    stages = ("job_train", "job_eval", "job_sample", "job_time")

    def parts():
        versions.part_hash.cache_clear()
        return {s: versions.part_hash(s) for s in stages}

    before = parts()
    (root / versions.JOBS).write_text(jobs + "\n\ndef job_new_stage(job):\n    return {'rows': []}\n")
    assert parts() == before
    # an edit inside one stage's own function stales that stage (the test can fail)
    edited = jobs.replace("def job_sample(job: dict)", "def job_sample(job: dict, _extra=None)", 1)
    assert edited != jobs
    (root / versions.JOBS).write_text(edited)
    now = parts()
    versions.part_hash.cache_clear()
    assert now["job_sample"] != before["job_sample"]
    assert {s: h for s, h in now.items() if s != "job_sample"} == {s: h for s, h in before.items() if s != "job_sample"}


def _run_demo(tmp_path, cluster: str) -> Path:
    out = pipeline.run_preset("demo-micro", cluster=cluster, results_root=tmp_path / "results",
                              work_root=tmp_path / "work", poll_s=0.5)
    assert out["failed"] == 0, out
    results = tmp_path / "results" / "demo-micro"
    df = pd.read_csv(results / "results.csv")
    demo = df[df["config.model"].eq("demo-mdlm")]
    assert {"train", "eval", "sample", "time"} <= set(demo["config.stage"])
    assert demo["config.group"].eq("Demo MDLM").all() and demo["display.colour"].eq("#17becf").all()
    assert (demo[demo["config.stage"].eq("sample")]["metrics.gen_ppl"] > 1).all()
    from analysis.pareto import draw_pareto
    from analysis.tables import write_tables

    assert any("Demo MDLM" in p.read_text() for p in write_tables(results) if p.suffix == ".md")
    assert all(p.stat().st_size > 0 for p in draw_pareto(results))
    return results


@pytest.mark.slow
def test_the_plugin_runs_through_the_pipeline_on_the_local_cluster(installed, tmp_path):
    _run_demo(tmp_path, "local")


@needs_slurm
@pytest.mark.slurm
@pytest.mark.slow
def test_the_plugin_runs_through_the_pipeline_on_slurm(installed, tmp_path):
    _run_demo(tmp_path, "slurm")
