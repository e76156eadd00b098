"""Timing a sampler whose full run would take many minutes (MDLM and the uncached samplers at
large L, spec 8.6): the real sampler runs end to end, but only every ``stride``-th network
call of each kind is computed (and timed, device synchronized); the others return a
stand-in of the right shape at once and are charged the time of the timed calls of the same
kind, interpolated linearly in call order. Everything outside the network (schedule, draws,
masks, Python) is measured for real at every step.

A call's kind is (cache or not, ``last``, width of ``at``): the feeds that share a kind differ
only in how many tokens they feed or how long the cache is, which grows steadily from call to
call, so the interpolation follows it (MDLM's calls are all identical: this is timing a number
of identical steps and scaling). ``tests/bench`` checks the estimate against full runs at the
largest length it runs in full and stores the error in the JSON.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from esolm.backbone import MASK_LOGIT
from esolm.interface import sync


class SubsampledNetwork:
    """Context manager over ``model.backbone``: computes 1 call in ``stride`` per kind; after the
    run ``estimated_seconds(wall)`` turns the measured wall time into the full run's estimate."""

    def __init__(self, model, stride: int):
        self.backbone, self.stride = model.backbone, max(1, int(stride))
        self.device = model.device
        self.vocab, self.mask_id = model.config.vocab_size, model.config.mask_id
        self.timed = defaultdict(list)  # kind -> [(call index, seconds)]
        self.skipped = defaultdict(list)  # kind -> [(call index, stand-in seconds)]
        self.seen = defaultdict(int)
        self.calls = 0

    def __enter__(self):
        row = torch.zeros(self.vocab, device=self.device)
        row[self.mask_id] = MASK_LOGIT
        self.row = row
        self.real = self.backbone.forward
        self.backbone.forward = self.forward
        return self

    def __exit__(self, *exc):
        del self.backbone.forward  # back to the class's forward
        return False

    def forward(self, tokens, positions, mask=None, cache=None, last=None, at=None):
        kind = (cache is not None, last, None if at is None else int(at.shape[1]))
        index, self.calls = self.calls, self.calls + 1
        n = self.seen[kind]
        self.seen[kind] += 1
        if n % self.stride == 0:
            sync(self.device)
            t0 = time.perf_counter()
            out = self.real(tokens, positions, mask, cache=cache, last=last, at=at)
            sync(self.device)
            self.timed[kind].append((index, time.perf_counter() - t0))
            return out
        t0 = time.perf_counter()
        width = last if last is not None else (at.shape[1] if at is not None else tokens.shape[1])
        out = self.row.expand(tokens.shape[0], width, self.vocab)  # a view: costs nothing
        self.skipped[kind].append((index, time.perf_counter() - t0))
        return out

    def network_seconds(self) -> tuple[float, float]:
        """(seconds of the timed calls, interpolated seconds of the skipped ones)."""
        timed = sum(s for calls in self.timed.values() for _, s in calls)
        charged = 0.0
        for kind, calls in self.skipped.items():
            idx, secs = zip(*self.timed[kind])
            charged += float(np.interp([i for i, _ in calls], idx, secs).sum())
        return timed, charged

    def estimated_seconds(self, wall: float) -> float:
        """The full run's time: the measured wall time, minus the stand-ins, plus their charge."""
        _, charged = self.network_seconds()
        standins = sum(s for calls in self.skipped.values() for _, s in calls)
        return wall - standins + charged

    def summary(self) -> dict:
        timed, charged = self.network_seconds()
        return dict(calls=self.calls, timed_calls=sum(len(c) for c in self.timed.values()),
                    stride=self.stride, timed_network_s=timed, charged_network_s=charged)
