"""Eso-LM (A) and (B) (spec 7): model and loss (model.py), orders and schedules
(ordering.py), and the KV-cached sampler (sampler.py)."""
from esolm.eso.model import EsoConfig, EsoLM, EsoLMA, EsoLMB, default_batch_split
from esolm.eso.ordering import block_schedule, proposal, sampling_orders

__all__ = ["EsoConfig", "EsoLM", "EsoLMA", "EsoLMB", "block_schedule", "default_batch_split",
           "proposal", "sampling_orders"]
