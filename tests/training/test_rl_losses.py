"""PPO and GRPO pieces without a TRL peer (TRL dropped PPO), checked against direct reference implementations of
their formulas: GAE's recursion, the KL-penalised per-token rewards, the clipped policy and value losses, the
adaptive KL controller, group-relative advantages. Pure tensors, no model."""

from __future__ import annotations

import torch

from training.losses import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_penalised_rewards,
)


def _reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Schulman et al. 2016 eq. 16 as a plain sum: A_t = Σ_l (γλ)^l δ_{t+l}, V after the end = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)) for t in range(n)]


def test_gae_equals_the_direct_sum_per_row_with_ragged_lengths():
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    lengths = [7, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma=0.99, lam=0.9)
    for row, n in enumerate(lengths):
        expected = _reference_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), 0.99, 0.9)
        torch.testing.assert_close(advantages[row, :n], torch.tensor(expected), rtol=0, atol=1e-5)
        assert advantages[row, n:].abs().sum() == 0
        torch.testing.assert_close(returns[row, :n], advantages[row, :n] + values[row, :n])
    # λ = 1, γ = 1: the advantage is the return-to-go minus the value (Monte Carlo)
    adv_mc, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    togo = rewards[0].flip(0).cumsum(0).flip(0)
    torch.testing.assert_close(adv_mc[0], togo - values[0], rtol=0, atol=1e-5)


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    logps = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.1, 2.0, 0.0], [-0.1, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl.sum(-1), torch.tensor([-0.5, 1.0]))


def test_clipped_policy_loss_clips_only_beyond_the_trust_region():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))  # ratios
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clip_frac = clipped_policy_loss(logps, old, adv, torch.ones(1, 4), clip=0.2)
    # per token: max(-A ρ, -A clip(ρ)): A>0, ρ 1.5 -> -1.2 (clipped); A<0, ρ 0.5 -> 0.8 (clipped); ρ 1.1 -> -1.1;
    # A<0, ρ 1.5 -> 1.5 (unclipped: the pessimistic side)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 0.8 - 1.1 + 1.5) / 4))
    assert clip_frac.item() == 0.5


def test_clipped_value_loss_takes_the_larger_error():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss = clipped_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: max((1-0)², (0.2-0)²) = 1; token 1: max(1, 1) = 1
    torch.testing.assert_close(loss, torch.tensor(0.5))


def test_adaptive_kl_moves_the_coefficient_toward_the_target():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(5.0, 10) > 0.1  # KL too high: stronger penalty (error clipped at +0.2)
    assert abs(ctl.value - 0.1 * 1.02) < 1e-9
    assert ctl.update(0.0, 10) < 0.102
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(5.0, 10) == 0.1


def test_group_advantages_are_relative_within_each_prompt():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0, -1.0, 1.0])
    adv = group_advantages(scores, group_size=2)
    torch.testing.assert_close(adv[:2], torch.tensor([-1.0, 1.0]) / (2**0.5 + 1e-4))
    assert adv[2:4].abs().sum() == 0  # equal scores: no signal
    torch.testing.assert_close(group_advantages(scores, 2, scale=False)[:2], torch.tensor([-1.0, 1.0]))
