"""Eso-LM orders and masks against the spec: sort keys (7.4, 11.11), the L = 6 grids of
7.5 (11.12), the cached sampling-step mask (7.5.6) and RoPE following the sort (7.6)."""
import pytest
import torch

from esolm import masks, registry
from esolm.eso import ordering as order
from esolm.eso.sampler import decode
from esolm.likelihood import inverse_permutation


def randomized(name, **kw):
    """A float64 eval-mode model with perturbed weights (0.1 keeps attention soft)."""
    model = registry.build(name, preset="smoke", dropout=0.0, **kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def grid(text: str) -> torch.Tensor:
    """Parse one of the spec's X/. grids (header line first, row label first) into a bool tensor."""
    rows = [line.split()[1:] for line in text.strip().splitlines()[1:]]
    return torch.tensor([[c == "X" for c in r] for r in rows])


# -------------------------------------------------------------------- sort keys (7.4, 11.11)
def test_sort_keys_reproduce_the_worked_example_of_7_4():
    masked = torch.tensor([[False, True, False, True, True, False]])  # z = (A, M, C, M, M, F)
    u = torch.tensor([[0.41, 0.83, 0.05, 0.30, 0.62, 0.77]]) / 0.9
    diffusion = torch.argsort(order.sort_keys(masked, order.SHUFFLE, uniform=u), dim=1, stable=True)
    sequential = torch.argsort(order.sort_keys(masked, order.SHUFFLE_CLEAN, uniform=u), dim=1, stable=True)
    natural = order.ordering(masked, order.NATURAL)
    assert diffusion.tolist() == [[2, 0, 5, 3, 4, 1]]  # sigma = (3, 1, 6, 4, 5, 2)
    assert sequential.tolist() == [[2, 0, 5, 1, 3, 4]]  # sigma = (3, 1, 6, 2, 4, 5)
    assert natural.tolist() == [[0, 2, 5, 1, 3, 4]]  # sigma = (1, 3, 6, 2, 4, 5)


@pytest.mark.parametrize("mode", order.MODES)
def test_sorting_puts_every_clean_slot_before_every_mask(mode):
    masked = torch.rand(64, 12) < 0.5
    pi = order.ordering(masked, mode)
    m = order.gather(masked, pi)
    assert torch.equal(m, m.sort(1).values)  # False (clean) ... True (masked)
    assert torch.equal(pi.sort(1).values, torch.arange(12).expand(64, 12))  # each row a permutation
    assert torch.equal(order.ungather(order.gather(masked, pi), pi), masked)


def test_sequential_orders_keep_masks_left_to_right_and_diffusion_orders_shuffle_them():
    masked = torch.rand(256, 12) < 0.5
    def masks_ascending(pi):
        rows = []
        for p, m in zip(pi, order.gather(masked, pi)):
            pos = p[m]
            rows.append(bool(torch.all(pos[1:] > pos[:-1])))
        return torch.tensor(rows)
    assert masks_ascending(order.ordering(masked, order.SHUFFLE_CLEAN)).all()
    assert masks_ascending(order.ordering(masked, order.NATURAL)).all()
    assert not masks_ascending(order.ordering(masked, order.SHUFFLE)).all()
    clean_natural = [bool(torch.all(p[~m][1:] > p[~m][:-1]))
                     for p, m in zip(order.ordering(masked, order.SHUFFLE_CLEAN), masked)]
    assert not all(clean_natural)  # (B)'s sequential half shuffles the clean tokens


# --------------------------------------------------------------------- masks (7.5, 11.12)
DIFF_B_ORIGINAL = """
       1A  2M  3C  4M  5M  6F
   1A   X   .   X   .   .   .
   2M   X   X   X   X   X   X
   3C   .   .   X   .   .   .
   4M   X   .   X   X   .   X
   5M   X   .   X   X   X   X
   6F   X   .   X   .   .   X
"""
DIFF_B_SORTED = """
       3C  1A  6F  4M  5M  2M
   3C   X   .   .   .   .   .
   1A   X   X   .   .   .   .
   6F   X   X   X   .   .   .
   4M   X   X   X   X   .   .
   5M   X   X   X   X   X   .
   2M   X   X   X   X   X   X
"""
DIFF_A_SORTED = """
       3C  1A  6F  4M  5M  2M
   3C   X   X   X   .   .   .
   1A   X   X   X   .   .   .
   6F   X   X   X   .   .   .
   4M   X   X   X   X   .   .
   5M   X   X   X   X   X   .
   2M   X   X   X   X   X   X
"""
SEQ_B_SORTED = """
      z3C z1A z6F z2M z4M z5M x3C x1A x6F x2B x4D x5E
  z3C   X   .   .   .   .   .   .   .   .   .   .   .
  z1A   .   X   .   .   .   .   X   .   .   .   .   .
  z6F   .   .   X   .   .   .   X   X   .   .   .   .
  z2M   .   .   .   X   .   .   X   X   X   .   .   .
  z4M   .   .   .   .   X   .   X   X   X   X   .   .
  z5M   .   .   .   .   .   X   X   X   X   X   X   .
  x3C   .   .   .   .   .   .   X   .   .   .   .   .
  x1A   .   .   .   .   .   .   X   X   .   .   .   .
  x6F   .   .   .   .   .   .   X   X   X   .   .   .
  x2B   .   .   .   .   .   .   X   X   X   X   .   .
  x4D   .   .   .   .   .   .   X   X   X   X   X   .
  x5E   .   .   .   .   .   .   X   X   X   X   X   X
"""
SEQ_B_ORIGINAL = """
      z1A z2M z3C z4M z5M z6F x1A x2B x3C x4D x5E x6F
  z1A   .   .   .   .   .   .   .   .   .   .   .   .
  z2M   .   X   .   .   .   .   X   .   X   .   .   X
  z3C   .   .   .   .   .   .   .   .   .   .   .   .
  z4M   .   .   .   X   .   .   X   X   X   .   .   X
  z5M   .   .   .   .   X   .   X   X   X   X   .   X
  z6F   .   .   .   .   .   .   .   .   .   .   .   .
  x1A   .   .   .   .   .   .   X   .   X   .   .   .
  x2B   .   .   .   .   .   .   X   X   X   .   .   X
  x3C   .   .   .   .   .   .   .   .   X   .   .   .
  x4D   .   .   .   .   .   .   X   X   X   X   .   X
  x5E   .   .   .   .   .   .   X   X   X   X   X   X
  x6F   .   .   .   .   .   .   X   .   X   .   .   X
"""
SEQ_A_SORTED = """
      z1A z3C z6F z2M z4M z5M x1A x3C x6F x2B x4D x5E
  z1A   X   .   .   .   .   .   .   .   .   .   .   .
  z3C   .   X   .   .   .   .   X   .   .   .   .   .
  z6F   .   .   X   .   .   .   X   X   .   .   .   .
  z2M   .   .   .   X   .   .   X   X   X   .   .   .
  z4M   .   .   .   .   X   .   X   X   X   X   .   .
  z5M   .   .   .   .   .   X   X   X   X   X   X   .
  x1A   .   .   .   .   .   .   X   X   X   .   .   .
  x3C   .   .   .   .   .   .   X   X   X   .   .   .
  x6F   .   .   .   .   .   .   X   X   X   .   .   .
  x2B   .   .   .   .   .   .   X   X   X   X   .   .
  x4D   .   .   .   .   .   .   X   X   X   X   X   .
  x5E   .   .   .   .   .   .   X   X   X   X   X   X
"""


def test_diffusion_masks_reproduce_the_grids_of_7_5_1_and_7_5_2():
    sigma = torch.tensor([2, 0, 5, 3, 4, 1])
    rank = inverse_permutation(sigma)
    sorted_b = masks.causal(6)
    assert torch.equal(sorted_b, grid(DIFF_B_SORTED))
    assert torch.equal(sorted_b[rank][:, rank], grid(DIFF_B_ORIGINAL))  # A[i,j] iff rank(j) <= rank(i)
    assert torch.equal(masks.prefix_lm(6, torch.tensor([3]))[0], grid(DIFF_A_SORTED))
    model_b = registry.build("esolm-b", preset="smoke", vocab_size=20, length=6)
    model_a = registry.build("esolm-a", preset="smoke", vocab_size=20, length=6)
    assert model_b.diffusion_mask(torch.tensor([3]), 6) == "causal"
    assert torch.equal(model_a.diffusion_mask(torch.tensor([3]), 6)[0], grid(DIFF_A_SORTED))


def test_sequential_masks_reproduce_the_grids_of_7_5_3_and_7_5_4():
    model_b = registry.build("esolm-b", preset="smoke", vocab_size=20, length=6, alpha_0=0.5)
    model_a = registry.build("esolm-a", preset="smoke", vocab_size=20, length=6, alpha_0=0.5)
    seq_b = model_b.sequential_mask(torch.tensor([3]), 6)[0]
    assert torch.equal(seq_b, grid(SEQ_B_SORTED))
    assert torch.equal(model_a.sequential_mask(torch.tensor([3]), 6)[0], grid(SEQ_A_SORTED))
    # in original order, the rows that matter (masked z, all of x) are the paper's eqs. 26-31;
    # the clean z rows are "don't care" (nobody attends to them, they carry no loss)
    sigma = torch.tensor([2, 0, 5, 1, 3, 4])
    rank = inverse_permutation(sigma)
    rank2 = torch.cat([rank, rank + 6])
    original = seq_b[rank2][:, rank2]
    expected = grid(SEQ_B_ORIGINAL)
    matters = torch.tensor([False, True, False, True, True, False] + [True] * 6)
    assert torch.equal(original[matters], expected[matters])
    assert not expected[~matters].any()


def test_cached_sampling_step_attends_as_in_the_grid_of_7_5_6():
    """sigma = (3,1,6,4,5,2), S = ((3,1),(6),(4,5),(2)): step 3 feeds [6, 4, 5] against the
    cached {3, 1}; step 4 feeds [4, 5, 2] against {3, 1, 6}."""
    model = randomized("esolm-b", vocab_size=20, length=6)
    sigma = torch.tensor([[2, 0, 5, 3, 4, 1]])
    fed = [(sigma[0, s.fed[0]:s.fed[1]] + 1).tolist()
           for s in decode(model, sigma, [2, 1, 2, 1], 6, generator=torch.Generator().manual_seed(0))]
    assert fed == [[3, 1], [3, 1, 6], [6, 4, 5], [4, 5, 2]]
    causal = torch.zeros(6, 6, dtype=torch.float64).masked_fill(~masks.causal(6), float("-inf"))
    step3 = model.step_mask(2, 5, 5, causal)[0] == 0
    assert torch.equal(step3, grid("""
            3 1 6 4 5
        6   X X X . .
        4   X X X X .
        5   X X X X X
    """))



# ----------------------------------------------------------------------------- RoPE (7.6)
def test_rope_positions_follow_the_tokens_through_the_sort():
    """7.6 / 11.6: with bidirectional attention, forward(x[pi], pi) = forward(x)[pi]."""
    model = randomized("esolm-b", vocab_size=30, length=10)
    x = torch.randint(0, 29, (3, 10))
    pi = order.ordering(torch.rand(3, 10) < 0.5, order.SHUFFLE)
    sorted_out = model.backbone(order.gather(x, pi), pi, None)
    natural = model.backbone(x, torch.arange(10), None)
    assert torch.allclose(sorted_out, torch.gather(natural, 1, pi[..., None].expand_as(natural)), atol=1e-10)
