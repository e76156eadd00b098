"""A small preset of the plugin's model beside the harness's AR (synthetic data, a Kneser-Ney n-gram
judge fitted on its train split), run through the harness's pipeline by name:
`run.py pareto --preset demo-micro`."""
from esolm import runs
from esolm.runs import RunConfig
from esolm.train import train_config
from experiments.presets import ModelEntry, Preset


def demo_micro() -> Preset:
    run = RunConfig(name="demo-micro", description="a plugin's model through the pipeline",
                    data=runs.Data("synthetic", length=16), backbone=runs.get("smoke").backbone,
                    train=train_config("smoke", steps=8, batch_size=8, eval_every=0, checkpoint_every=4),
                    eval=runs.Eval(batch_size=8, max_batches=1, exact_orders=[], exact_max_sequences=8),
                    sampling=runs.Sampling(num_samples=4, batch_size=4),
                    timing=runs.Timing(batch_size=2, trials=1, warmup=0),
                    long_context=runs.LongContext(lengths=[]),
                    mauve=runs.Mauve(featurizer="minilm", max_text_length=32),
                    slurm={"default": dict(time_min=10, array_parallelism=4)})
    models = [ModelEntry("ar", "ar", {}, [dict(steps=15)]),
              ModelEntry("demo", "demo-mdlm", {}, [dict(steps=4), dict(steps=8)])]
    return Preset(run, models=models, evaluator="ngram")
