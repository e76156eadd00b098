"""Experiment presets: which models a run name trains and which sampling sweeps it scores and
times (spec 8.5, 8.6, 10). Selected by name with --preset; everything else about the run (data,
backbone, training, evaluation, timing, Slurm) is its RunConfig (esolm/runs.py).

A preset is data; the pipeline turns it into jobs and never looks at a model's name: what a
model supports comes from its capabilities (exact likelihood, KV cache, NFE = L options, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from esolm import runs
from esolm.config import ConfigError
from esolm.runs import CPU_STEPS, RunConfig


@dataclass
class ModelEntry:
    """One trained model of a preset and its sampling sweep."""

    label: str  # unique within the preset, e.g. "esolm-b a0=0.25"
    model: str  # registry name
    overrides: dict = field(default_factory=dict)  # model config fields
    sweep: list[dict] = field(default_factory=list)  # sample options per configuration
    # the method it is tabled and plotted as: by default (None) the model's own Display label with
    # these overrides ("Eso-LM (B)", "BD3-LM L'=4"; a finetune adds " (from MDLM)"), filled in by get()
    group: str | None = None
    train: dict = field(default_factory=dict)  # training overrides on top of the preset's
    nfe_equals_l: bool = False  # timed in the NFE = L regime (8.6), with the options its capabilities declare
    # the preset's eval settings for this model only: e.g. exact_orders and exact_max_sequences
    # for a model whose exact likelihood takes L passes per order (by default K = 1 on 1/8 of
    # the exact sequences), where the budget allows more
    eval: dict = field(default_factory=dict)
    # the label of an earlier entry of the preset whose trained weights (EMA) this one starts from, the
    # same parameters required (a finetune: spec 10, the paper's LM1B BD3-LMs start from MDLM); it still
    # trains its own budget (the preset's steps plus m.train), from step 0 with a fresh optimizer.
    # results.csv marks each of its rows with config.init_from = that label (experiments/aggregate.py)
    init_from: str | None = None
    # the conditional task (Preset.conditional): None = not in it; a dict = in it, with these sample
    # options ({} = its model's NFE = L options where it defines them, else the entry's first sweep point)
    conditional: dict | None = None


@dataclass
class Preset:
    """An experiment: a run name's configuration (esolm/runs.py: data, backbone, training,
    evaluation, sampling, timing, MAUVE, Slurm) and the models and sweeps it compares."""

    run: RunConfig
    models: list[ModelEntry]
    # the gen-PPL judge: dict(model=..., overrides=..., train=...) trains one of this harness (a model
    # with capabilities.next_token_scoring, on the run's data and backbone); "ngram" / "ngram:N" (a
    # Kneser-Ney n-gram fitted on the train split, esolm/metrics/ngram.py); "source"; or a HF name/folder
    evaluator: dict | str = "source"
    # a second, different judge of the same kinds: every gen-PPL number is also scored under it, and
    # each gen-PPL claim says where the two judges disagree (None: one judge)
    second_evaluator: dict | str | None = None
    # null samplers scored exactly like a model's samples (esolm/metrics/calibration.py): the
    # calibration rows of every gen-PPL table and figure, so that gaming a metric shows
    calibration: tuple = ()
    # models only timed at NFE = L (Table 11), not trained: latency does not depend on the weights
    timing_only: list[ModelEntry] = field(default_factory=list)
    # one clock per comparison (issue 25 item 4): every sweep configuration timed in one job,
    # interleaved (experiments/jobs.py _clock), instead of a time job per configuration; runs = how
    # many independent timing runs (each also times the NFE = L table again), the first feeding
    # tables, figures and claims, the others checking that the timing verdicts repeat. None: a
    # time job per configuration (the paper presets, timed on a GPU node each)
    clock: dict | None = None
    # the conditional task (issue 27 item 3, esolm/metrics/conditional.py): held-out passages completed
    # by every entry with ``conditional`` set, one job per form (a form its model does not sample
    # under gives a row saying so); None: no task.
    # Keys: forms, num_examples (per form), batch_size, warmup (untimed calls), rounds (timed passes)
    conditional: dict | None = None

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def description(self) -> str:
        return self.run.description

    @property
    def corpus(self) -> str:
        return self.run.data.corpus


def _eso_sweep(steps_all: list[int], steps_eval1: list[int], alphas: list[float]) -> list[dict]:
    """alpha_0_eval x steps, plus extra step counts at alpha_0_eval = 1 (the shape of 8.5)."""
    sweep = [dict(steps=t, alpha_0_eval=a) for a in alphas for t in steps_all]
    sweep += [dict(steps=t, alpha_0_eval=1.0) for t in steps_eval1 if 1.0 in alphas]
    return sorted(sweep, key=lambda d: (-d["alpha_0_eval"], d["steps"]))


def _eso_models(alphas_train, sweep) -> list[ModelEntry]:
    return [ModelEntry(f"esolm-b a0={a:g}", "esolm-b", {"alpha_0": a}, sweep,
                       nfe_equals_l=i == 0)
            for i, a in enumerate(alphas_train)]


def _ar(sweep_steps: int) -> ModelEntry:
    return ModelEntry("ar", "ar", {}, [dict(steps=sweep_steps)], nfe_equals_l=True)


def _mdlm(steps: list[int], **entry) -> ModelEntry:
    return ModelEntry("mdlm", "mdlm", {}, [dict(steps=t) for t in steps], nfe_equals_l=True,
                      **entry)


def _bd3(block: int, steps: list[int]) -> ModelEntry:
    return ModelEntry(f"bd3lm L'={block}", "bd3lm", {"block_size": block},
                      [dict(steps=t) for t in steps], nfe_equals_l=True)


def _bd3_from_mdlm(block: int) -> ModelEntry:
    """BD3-LM L' finetuned from the trained MDLM entry "mdlm", as the paper trains its LM1B BD3-LMs
    (spec 6, 10): the preset's own training budget on top of MDLM's; test NELBO only (no exact
    likelihood, no sampling sweep, no timing)."""
    return ModelEntry(f"bd3lm L'={block} from mdlm", "bd3lm", {"block_size": block},
                      [], eval=dict(exact_orders=[]), init_from="mdlm")


def _families(steps: list[int], remdm_steps: list[int]) -> list[ModelEntry]:
    """The field's families beyond the paper's five (docs/families.md): UDLM and SEDD (absorbing)
    swept over ``steps``, and MDLM sampled with ReMDM's remasking (its cap schedule, eta = 0.008)
    over ``remdm_steps``. ReMDM is a sampler: its entry trains the MDLM recipe under its own name
    (the same seed, so the same weights as the "mdlm" entry), which keeps its rows a method of their own."""
    return [ModelEntry("udlm", "udlm", {}, [dict(steps=t) for t in steps]),
            ModelEntry("sedd", "sedd", {}, [dict(steps=t) for t in steps]),
            ModelEntry("remdm", "remdm", {}, [dict(steps=t) for t in remdm_steps])]


def _seed_replicates(models: list[ModelEntry], seeds=(2, 3)) -> list[ModelEntry]:
    """The same models trained again from other training seeds (TrainConfig.seed; the main entries
    use 1, the second judge JUDGE_SEED): train and the test NELBO only (no exact likelihood, no
    sampling sweep, no timing), the same group (one method in tables and figures, folded into one
    value by the perplexity claims: results.csv config.train_seed, analysis/claims.py fold_seeds)."""
    return [ModelEntry(f"{m.label} seed={s}", m.model, dict(m.overrides), [], group=m.group, train=dict(m.train, seed=s),
                       eval=dict(exact_orders=[])) for m in models for s in seeds]


# the CPU presets' clock: rounds until the 95 % interval of every ratio of two configurations
# (paired rounds) is within +-10 % of it; at least 8, at most 45 rounds (until 2026-12-06 the rule
# was each mean within +-10 %/sqrt(2), at most 20; until 2026-12-07 at most 30: results/cpu's first
# timing run hit each of those caps)
CLOCK = dict(runs=1, min_rounds=8, max_rounds=45, target=0.10)

# the null samplers of every CPU preset's calibration rows (esolm/metrics/calibration.py)
CALIBRATION = ("real text", "unigram", "repeater", "all-EOS")
# the second judge's training seed: no scored model trains with it (they use TrainConfig.seed = 1,
# and extra training seeds of the scored models count up from there), so it shares no initial
# weights, batch order or noise with any of them
JUDGE_SEED = 1001

# the conditional task of the CPU presets (issue 27 item 3; docs/conditional.md): per form, 32 held-out
# passages in sampling calls of 16, one untimed warm-up call, then the scored pass and two more timed
# passes (6 timed calls per form; the intervals of seconds per example are over them)
CONDITIONAL_CPU = dict(forms=["prefix", "infill"], num_examples=32, batch_size=16, warmup=1, rounds=3)


def _with_conditional(preset: Preset, settings: dict, options: dict | None = None) -> Preset:
    """The preset with the conditional task: every entry with a sampling sweep joins it, with the
    sample options ``options[label]`` where given (else its model's NFE = L options or its first
    sweep point, ModelEntry.conditional)."""
    preset.conditional = dict(settings)
    for m in preset.models:
        if m.sweep:
            m.conditional = dict((options or {}).get(m.label, {}))
    return preset


def smoke() -> Preset:
    """The whole pipeline in a few minutes on 2 CPU cores (CI): tiny models, few steps."""
    eso = _eso_sweep([4, 16], [], [1.0, 0.25])
    preset = Preset(runs.get("smoke"),
                    models=[_ar(31), _mdlm([4, 16]), _bd3(4, [8, 32]), *_eso_models([1.0, 0.25], eso),
                            *_families([4, 16], [4, 16])],
                    evaluator="ngram", second_evaluator=dict(model="ar", overrides={}, train=dict(steps=60, seed=JUDGE_SEED)),
                    calibration=CALIBRATION, clock=dict(CLOCK, min_rounds=2, max_rounds=3))
    return _with_conditional(preset, dict(CONDITIONAL_CPU, num_examples=4, batch_size=2, rounds=1))


def _cpu_evaluator(steps: int) -> dict:
    """The second judge: the same backbone trained 1.5 times as long from its own seed (so its
    weights, batches and noise are no scored model's)."""
    return dict(model="ar", overrides={}, train=dict(steps=3 * steps // 2, eval_every=3 * steps // 4,
                                                     checkpoint_every=3 * steps // 8, seed=JUDGE_SEED))


ESO_SWEEP_CPU = _eso_sweep([8, 32, 128], [16, 64], [1.0, 0.25, 0.0625])
MDLM_STEPS_CPU = [8, 16, 32, 64, 128]


def tiny() -> Preset:
    """The embedded default (`make quickstart`): AR, MDLM and Eso-LM (B) at alpha_0 in {1, 0.25}
    on byte-level Shakespeare, L = 128, a 4 x 128 backbone, 300 steps x 32 sequences each;
    the sweeps of the paper scaled to L = 128 (MDLM up to T = 64 and without its exact
    likelihood; `cpu` adds T = 128, whose sampling and timing cost as much as T = 8 ... 64
    together, and the exact likelihood); gen PPL judged by a Kneser-Ney byte 8-gram and, second,
    by an AR trained 1.5 times as long from its own seed; calibration rows (real text, null samplers);
    BD3-LM only in the NFE = L latency table. Its time on 2 CPU cores, setup included, is in
    the README and docs/cpu_presets.md (with where it goes)."""
    run = runs.get("tiny")
    run.description += ": AR, MDLM, Eso-LM (B) a0 in {1, 0.25}"
    # MDLM without its IW likelihood (L passes per order: 77 s of the eval wave at K = 1 on 32
    # sequences); no claim reads it, `cpu` has it
    return Preset(run, models=[_ar(127), _mdlm(MDLM_STEPS_CPU[:-1], eval=dict(exact_orders=[])),
                               *_eso_models([1.0, 0.25], ESO_SWEEP_CPU)],
                  evaluator="ngram", second_evaluator=_cpu_evaluator(CPU_STEPS), calibration=CALIBRATION,
                  timing_only=[_bd3(4, []), _bd3(16, [])], clock=CLOCK)


def cpu() -> Preset:
    """The full CPU comparison (run once, committed under results/cpu/): AR, MDLM, BD3-LM
    L' in {4, 16} (each also sampled on the authors' time grid), Eso-LM (B) at alpha_0 in
    {1, 0.25, 0.125} and Eso-LM (A) at 0.25, with the data, backbone, budget and
    sweeps of `tiny` (whose jobs are a subset of these); and BD3-LM L' in {4, 16} finetuned
    from the trained MDLM under the paper's LM1B protocol (each its own CPU_STEPS after MDLM's
    CPU_STEPS: twice a scratch run's budget in all), test NELBO only; and AR, MDLM, both BD3-LMs
    and the three Eso-LM (B) trained again from seeds 2 and 3, test NELBO only (the training-seed
    spread of C1, C3 and C4); and the field's other families (UDLM, SEDD, ReMDM) with their
    sweeps over steps."""
    bd3 = [_bd3(b, [128 // b, 2 * 128 // b, 128, 512]) for b in (4, 16)]
    for m in bd3:  # one step per block, again on the authors' grid (linspace(1, 0, T'), spec 6)
        m.sweep += [dict(steps=128 // int(m.overrides["block_size"]), reference_grid=True),
                    dict(steps=2 * 128 // int(m.overrides["block_size"]), reference_grid=True)]
    # Eso-LM (A)'s exact likelihood takes a pass per diffused token (not one per order), yet at
    # alpha_0 = 0.25 and L = 128 an order of 32 sequences cost 2.2 s here: the same K and the
    # same 64 sequences as Eso-LM (B) fit the budget (C2 is judged at the largest K)
    eso_a = ModelEntry("esolm-a a0=0.25", "esolm-a", {"alpha_0": 0.25},
                       [dict(steps=t) for t in (16, 128)], eval=dict(exact_orders=[1, 10, 100], exact_max_sequences=64))
    run = runs.get("cpu")
    run.description += (": every method, Eso-LM (B) at three alpha_0, BD3-LM also finetuned from MDLM; UDLM, SEDD "
                        "and ReMDM")
    main = [_ar(127), _mdlm(MDLM_STEPS_CPU), *bd3, *_eso_models([1.0, 0.25, 0.125], ESO_SWEEP_CPU)]
    # training seeds 2 and 3 of the models the perplexity claims (C1, C3, C4) compare: train + test NELBO
    preset = Preset(run, models=[*main, eso_a, *_families([8, 16, 32, 64], [32, 128]),
                                 *[_bd3_from_mdlm(b) for b in (4, 16)], *_seed_replicates(main)],
                    evaluator="ngram", second_evaluator=_cpu_evaluator(CPU_STEPS), calibration=CALIBRATION,
                    clock=dict(CLOCK, runs=2))
    # Eso-LM (A) has no NFE = L options: its sweep point nearest one token per step (T = L)
    return _with_conditional(preset, CONDITIONAL_CPU, {eso_a.label: dict(steps=128)})


def _paper(corpus: str) -> Preset:
    run = runs.get(f"paper-{corpus}")
    length = run.data.length
    eso = _eso_sweep([16, 128, 1024], [32, 64, 256, 4096], [1.0, 0.5, 0.25, 0.0625])
    return Preset(run, models=[
        _ar(length - 1), ModelEntry("ar+adaln", "ar", {"adaln": True}, []),
        _mdlm([8, 16, 32, 48, 64, 128, 256, 1024, 4096]),
        *[_bd3(b, [256, 512, 1024, 2048, 4096]) for b in (4, 8, 16)],
        *_eso_models([1.0, 0.5, 0.25, 0.125], eso),
    ], evaluator="gpt2-large" if corpus == "owt" else dict(model="ar", overrides={}, train={}))


PRESETS = {
    "smoke": smoke,
    "tiny": tiny,
    "cpu": cpu,
    "paper-owt": lambda: _paper("owt"),
    "paper-lm1b": lambda: _paper("lm1b"),
}


PRESET_ENTRY_POINTS = "esolm.presets"  # a plugin's presets: name = "module:function returning a Preset"


def _plugin_presets() -> dict:
    """Presets of installed packages (their ``esolm.presets`` entry points); a plugin may not
    shadow a built-in preset."""
    import importlib.metadata

    out = {}
    for ep in importlib.metadata.entry_points(group=PRESET_ENTRY_POINTS):
        if ep.name in PRESETS:
            raise ConfigError(f"the {PRESET_ENTRY_POINTS} entry point {ep.name!r} of "
                              f"{ep.dist.name if ep.dist else 'an installed package'} shadows the built-in preset "
                              f"{ep.name!r}; rename the plugin's preset")
        out[ep.name] = ep
    return out


def names() -> list[str]:
    """Every preset name: the built-in ones, then those of installed plugins."""
    return list(PRESETS) + sorted(_plugin_presets())


def get(name: str) -> Preset:
    if name in PRESETS:
        preset = PRESETS[name]()
    else:
        plugin = _plugin_presets().get(name)
        if plugin is None:
            raise ConfigError(f"unknown experiment preset {name!r}; presets: {', '.join(names())}")
        preset = plugin.load()()
    resolve_methods(preset)
    return preset


def display_of(entry: ModelEntry):
    """The model's own Display with the entry's config overrides."""
    from esolm import registry

    return registry.model_class(entry.model).display(registry.build_config(entry.model, **entry.overrides))


def method_of(entry: ModelEntry) -> str:
    """The method a model entry is plotted and tabled as: its model's own Display label with
    its config (what also links its rows to the paper's numbers, results/paper_anchors.json)."""
    return display_of(entry).label


def resolve_methods(preset: Preset) -> Preset:
    """Give every entry without an explicit ``group`` its method (:func:`method_of`); a finetune
    (``init_from``) is its own method, "<method> (from <the initial entry's method>)"."""
    entries = preset.models + preset.timing_only
    by_label = {m.label: m for m in entries}
    for m in entries:
        if m.group is None:
            m.group = method_of(m)
    for m in entries:
        if m.init_from is not None and m.init_from in by_label and " (from " not in m.group:
            m.group = f"{m.group} (from {by_label[m.init_from].group})"
    check_styles(entries)
    return preset


def check_styles(entries: list[ModelEntry]) -> None:
    """Every figure tells methods apart by colour: two models whose Display labels differ may not
    share a colour (a finetune keeps its model's label and colour)."""
    seen: dict[str, str] = {}
    for m in entries:
        d = display_of(m)
        other = seen.setdefault(d.colour.lower(), d.label)
        if other != d.label:
            raise ConfigError(f"{d.label} ({m.model}) and {other} are drawn in the same colour {d.colour}; give "
                              f"one of them its own colour in its display() (every figure tells methods apart by colour)")

from experiments.presets_released import PRESETS as _RELEASED  # noqa: E402 - the released-checkpoint presets
PRESETS.update(_RELEASED)
from experiments.presets_xsum import PRESETS as _XSUM  # noqa: E402 - Table 16 (XSum)
PRESETS.update(_XSUM)
