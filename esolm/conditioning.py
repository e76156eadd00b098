"""Given tokens of a conditional sample (spec 15.4): a prompt (prefix) or tokens anywhere
(infilling). A sampler keeps them unchanged at every step and draws the free positions from
the conditional law its factorisation defines.

    given = by_count(prompts, counts)                  # per-row prefixes of different lengths
    given = from_text("ROMEO:", tokenizer, length=64)   # one prompt, BOS first
    given = template_ids("ROMEO: [MASK:5] thee", tokenizer, length=64)   # infill
    out = model.sample(8, steps=64, given=given)       # a 1-row Given serves every sample

``form`` is "prefix" when each row's given positions are 0..p_b - 1 (rows may differ in p_b),
else "infill"; a model lists the forms it samples under in ``capabilities.conditioning``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from esolm.config import ConfigError
from esolm.interface import SampleOutput

PREFIX, INFILL = "prefix", "infill"
FORMS = (PREFIX, INFILL)
# "[MASK]" = one free token, "[MASK:n]" = n free tokens
MASK_PATTERN = re.compile(r"\[MASK(?::(\d+))?\]")


@dataclass(frozen=True)
class Given:
    """Tokens a sample must keep: ``tokens`` [B, n] long (values at given positions; anything, e.g.
    the mask id, elsewhere) and ``mask`` [B, n] bool (True where given), n = the sampled length."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        tokens, mask = torch.as_tensor(self.tokens), torch.as_tensor(self.mask)
        if tokens.dim() != 2 or tokens.shape != mask.shape:
            raise ConfigError(f"Given needs tokens and mask of one shape [batch, length]; got "
                              f"{tuple(tokens.shape)} and {tuple(mask.shape)}")
        if tokens.is_floating_point() or tokens.is_complex():
            raise ConfigError(f"Given tokens must be integer ids; got dtype {tokens.dtype}")
        object.__setattr__(self, "tokens", tokens.long())
        object.__setattr__(self, "mask", mask.bool().to(tokens.device))

    # -- what the samplers read ---------------------------------------------------------
    @property
    def counts(self) -> torch.Tensor:
        """[B] number of given tokens of each row."""
        return self.mask.sum(1)

    @property
    def empty(self) -> bool:
        """No row has a given token (the sampler must then run as unconditional)."""
        return not bool(self.mask.any())

    @property
    def form(self) -> str:
        """"prefix" when every row's given positions are 0..p_b - 1, else "infill"."""
        n = self.mask.shape[1]
        prefix = torch.arange(n, device=self.mask.device)[None] < self.counts[:, None]
        return PREFIX if torch.equal(prefix, self.mask) else INFILL

    def prefixes(self) -> torch.Tensor:
        """[B] prefix length of each row (form == "prefix")."""
        if self.form != PREFIX:
            raise ConfigError("prefixes() needs given tokens that form a prefix in every row; these are an infill")
        return self.counts

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the given tokens written in (the projection onto the given set)."""
        return torch.where(self.mask.to(x.device), self.tokens.to(x.device), x)

    def place_column(self, column: torch.Tensor, j: int) -> torch.Tensor:
        """``column`` [B] (position j of every row) with the given tokens of position j written in."""
        return torch.where(self.mask[:, j], self.tokens[:, j], column)

    def preserved(self, x: torch.Tensor) -> bool:
        """Every given token of ``x`` [B, n] unchanged."""
        if tuple(x.shape) != tuple(self.mask.shape):
            return False
        same = x.to(self.tokens.device) == self.tokens
        return bool((same | ~self.mask).all())

    def to(self, device) -> "Given":
        return Given(self.tokens.to(device), self.mask.to(device))

    def rows(self, index) -> "Given":
        """The rows ``index`` (a slice, a list or a tensor of row indices)."""
        return Given(self.tokens[index], self.mask[index])

    # -- the one check ------------------------------------------------------------------
    def checked(self, model, batch: int, length: int) -> "Given":
        """This Given on the model's device, one row per sample: a 1-row Given is repeated to
        ``batch`` rows. One ConfigError names the problem and the fix when the shape, the ids
        or the form do not fit the model."""
        name = getattr(model, "name", type(model).__name__)
        rows, n = self.mask.shape
        if rows not in (1, batch):
            raise ConfigError(f"given tokens have {rows} rows but {batch} samples were asked for; pass one row "
                              f"(shared by every sample) or one row per sample")
        if n != length:
            raise ConfigError(f"given tokens cover {n} positions but {name} samples length={length}; build them "
                              f"with length={length} (or sample length={n})")
        _check_ids(self, model.config, name)
        forms = tuple(model.capabilities_for(model.config).conditioning)
        form = self.form
        if form not in forms:
            raise ConfigError(_form_message(name, form, forms))
        out = self if rows == batch else Given(self.tokens.expand(batch, n), self.mask.expand(batch, n))
        return out.to(model.device)


def _check_ids(given: Given, config, name: str) -> None:
    values = given.tokens[given.mask]
    if not values.numel():
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ConfigError(f"given token ids must lie in [0, {config.vocab_size}) for {name}; got range [{lo}, {hi}]: "
                          f"encode the prompt with the model's tokenizer")
    if bool((values == config.mask_id).any()):
        raise ConfigError(f"a given token is the mask id {config.mask_id}; mark free positions with mask=False "
                          f"(in a template: [MASK] or [MASK:n]) instead of giving the mask token")


def _form_message(name: str, form: str, forms: tuple) -> str:
    if not forms:
        return f"{name} does not sample under given tokens (its capabilities list no conditioning form)"
    if form == INFILL and PREFIX in forms:
        return (f"{name} samples under a prompt (prefix) only, not an infill: its factorisation has no right "
                f"context. Give tokens at positions 0..p-1 only, or use a model that infills (supported: "
                f"{', '.join(forms)})")
    return f"{name} cannot sample under given tokens of form {form!r}; supported: {', '.join(forms)}"


# ------------------------------------------------------------------------ building a Given
def by_count(tokens: torch.Tensor, counts) -> Given:
    """Prefix ``Given``: row b keeps its first ``counts[b]`` tokens of ``tokens`` [B, n]
    (``counts``: an int for every row, or [B])."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2:
        raise ConfigError(f"by_count needs tokens of shape [batch, length]; got {tuple(tokens.shape)}")
    B, n = tokens.shape
    counts = torch.as_tensor(counts, device=tokens.device).long().reshape(-1)
    if counts.numel() not in (1, B):
        raise ConfigError(f"by_count needs one prefix length or one per row ({B}); got {counts.numel()}")
    counts = counts.expand(B)
    if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > n):
        raise ConfigError(f"prefix lengths must lie in [0, {n}]; got {counts.tolist()}")
    mask = torch.arange(n, device=tokens.device)[None] < counts[:, None]
    return Given(tokens, mask)


def from_ids(ids: list[int], length: int, *, mask_id: int = 0) -> Given:
    """A one-row prefix ``Given`` of length ``length`` holding ``ids`` at positions 0..len-1."""
    if len(ids) > length:
        raise ConfigError(f"the prompt has {len(ids)} tokens but samples have length={length}; shorten the "
                          f"prompt or sample a longer length")
    tokens = torch.full((1, length), mask_id, dtype=torch.long)
    tokens[0, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return by_count(tokens, len(ids))


def from_text(text: str, tokenizer, length: int, *, bos: bool = True) -> Given:
    """A one-row prompt: ``text`` encoded, BOS first when ``bos`` (the samplers' sequences start
    with BOS, as the packed training data does), at positions 0..p-1 of ``length``."""
    ids = _with_bos(tokenizer.encode(text), tokenizer, bos)
    return from_ids(ids, length, mask_id=tokenizer.mask_id)


def template_ids(text: str, tokenizer, length: int, *, bos: bool = True) -> Given:
    """A one-row infill ``Given`` from a template: ``[MASK]`` marks one free token, ``[MASK:n]``
    n free tokens, the text between them is given (each piece encoded on its own). Positions
    after the template's end are free (the model continues the text), BOS first when ``bos``.
    A template whose only free tokens come after all its text is a prefix."""
    tokens, mask, pos = [], [], 0
    for match in MASK_PATTERN.finditer(text):
        _append_text(text[pos:match.start()], tokenizer, tokens, mask)
        n = 1 if match.group(1) is None else int(match.group(1))
        tokens += [tokenizer.mask_id] * n
        mask += [False] * n
        pos = match.end()
    _append_text(text[pos:], tokenizer, tokens, mask)
    if bos and not (mask and mask[0] and tokens[0] == tokenizer.bos_id):
        tokens, mask = [tokenizer.bos_id, *tokens], [True, *mask]
    if len(tokens) > length:
        raise ConfigError(f"the template spans {len(tokens)} tokens (text plus [MASK] slots) but samples have "
                          f"length={length}; shorten it or sample a longer length")
    pad = length - len(tokens)
    return Given(torch.tensor([tokens + [tokenizer.mask_id] * pad]), torch.tensor([mask + [False] * pad]))


def _append_text(piece: str, tokenizer, tokens: list, mask: list) -> None:
    if piece:
        ids = tokenizer.encode(piece)
        tokens += ids
        mask += [True] * len(ids)


def _with_bos(ids: list[int], tokenizer, bos: bool) -> list[int]:
    """``ids`` with BOS first when ``bos`` (unless they already start with it)."""
    return [tokenizer.bos_id, *ids] if bos and (not ids or ids[0] != tokenizer.bos_id) else list(ids)


def stack(givens: list[Given]) -> Given:
    """One ``Given`` whose rows are those of ``givens`` (all of one length)."""
    if not givens:
        raise ConfigError("stack needs at least one Given")
    return Given(torch.cat([g.tokens for g in givens]), torch.cat([g.mask for g in givens]))


def by_groups(given: Given, run) -> SampleOutput:
    """``run(rows)`` (rows: a ``Given``, returning a SampleOutput) once per group of rows with the
    same number of given tokens, for a sampler whose slot arithmetic the batch shares (Eso-LM,
    spec 15.4.4). One group: ``run(given)`` itself. Else the rows come back in place, NFE and
    seconds are summed (the network calls made) and each group's extra is listed in
    ``extra["groups"]`` with its ``given`` count."""
    counts = given.counts
    values = torch.unique(counts).tolist()
    if len(values) <= 1:
        return run(given)
    tokens, nfe, seconds, groups = given.tokens.clone(), 0, 0.0, []
    for value in values:
        index = (counts == value).nonzero(as_tuple=True)[0]
        out = run(given.rows(index))
        tokens[index] = out.tokens.to(tokens.device)
        nfe, seconds = nfe + out.nfe, seconds + out.seconds
        groups.append(dict(out.extra, given=value, rows=len(index), nfe=out.nfe))
    return SampleOutput(tokens=tokens, nfe=nfe, seconds=seconds, extra={"groups": groups})
