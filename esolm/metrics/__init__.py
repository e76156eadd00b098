"""Sample quality and speed (spec 8.2-8.6): gen PPL, entropy, self-BLEU, MAUVE, the byte k-gram
similarity, null samplers for calibration, bootstrap intervals, timing.

    from esolm.metrics import score_samples
    score_samples("samples.jsonl", evaluator="source")   # writes samples.metrics.json
"""
from esolm.metrics.bootstrap import bootstrap_interval, mean_interval, ppl_interval, ratio_interval
from esolm.metrics.calibration import NULL_SAMPLERS, null_samples
from esolm.metrics.distributional import distributional_score
from esolm.metrics.entropy import entropy_summary, unigram_entropy
from esolm.metrics.evaluators import Evaluator, load_evaluator
from esolm.metrics.genppl import gen_ppl, valid_targets
from esolm.metrics.mauve import featurize, mauve_score
from esolm.metrics.score import metrics_path, read_samples, score_samples
from esolm.metrics.selfbleu import self_bleu
from esolm.metrics.timing import environment_fingerprint, time_sampler

__all__ = ["NULL_SAMPLERS", "Evaluator", "bootstrap_interval", "distributional_score", "entropy_summary", "environment_fingerprint", "featurize", "gen_ppl", "load_evaluator",
           "mauve_score", "mean_interval", "metrics_path", "null_samples", "ppl_interval", "ratio_interval", "read_samples", "score_samples", "self_bleu", "time_sampler",
           "unigram_entropy", "valid_targets"]
