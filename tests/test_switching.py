"""Switching policies on their own, against hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch

from srd_plugin import SRDConfig
from srd_plugin.switching import RENDER, SKETCH, AdaptivePolicy, make_policy, relative_change

TIMESTEPS = [1000.0 - 100.0 * i for i in range(10)]  # 1000, 900, ..., 100


def run_fixed(config: SRDConfig, num_steps: int = 10) -> int:
    """Sketch steps a non-adaptive policy yields for a run of `num_steps` steps."""
    policy = make_policy(config)
    timesteps = TIMESTEPS[:num_steps]
    if policy.start(timesteps, 1000) == RENDER:
        return 0
    for i in range(num_steps):
        if policy.after_step(i, None).switch:
            return i + 1
    return num_steps


@pytest.mark.parametrize("k", [0, 1, 5, 9, 10])
def test_step_policy(k):
    assert run_fixed(SRDConfig(switch="step", switch_step=k)) == k


def test_step_policy_beyond_step_count_fails_at_start():
    policy = make_policy(SRDConfig(switch="step", switch_step=11))
    with pytest.raises(ValueError, match="switch_step=11 is beyond the 10 denoising steps.*0..10"):
        policy.start(TIMESTEPS, 1000)


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (0.25, 3), (0.5, 5), (0.34, 3), (1.0, 10)])
def test_ratio_policy_rounds_half_up(ratio, expected):
    assert run_fixed(SRDConfig(switch="ratio", switch_ratio=ratio)) == expected


@pytest.mark.parametrize("ratio, expected", [(0.0, 10), (0.55, 5), (0.5, 6), (0.95, 1), (1.0, 1)])
def test_boundary_policy_sketches_while_t_at_or_above_boundary(ratio, expected):
    # t = 1000, 900, ..., 100: the steps with t >= ratio * 1000 sketch
    assert run_fixed(SRDConfig(switch="boundary", boundary_ratio=ratio)) == expected


def test_relative_change_formula():
    a = torch.tensor([1.0, -2.0, 3.0])
    b = torch.tensor([1.5, -2.0, 2.0])
    expected = math.tanh((0.5 + 0.0 + 1.0) / 3 / ((1 + 2 + 3) / 3))
    assert relative_change(a, b) == pytest.approx(expected, rel=1e-6)
    assert relative_change(torch.zeros(3), torch.zeros(3)) == 0.0  # no division by zero


def drive(policy: AdaptivePolicy, distances: list[float | None], num_steps: int) -> tuple[int, list]:
    policy.start([float(num_steps - i) for i in range(num_steps)], 1000)
    metrics = []
    for i, d in enumerate(distances):
        decision = policy.update(i, d)
        metrics.append(decision.metric)
        if decision.switch:
            return i + 1, metrics
    return num_steps, metrics


def test_adaptive_settles_when_decrease_is_small_and_positive():
    config = SRDConfig(threshold=0.01, min_sketch_steps=3)
    # d: -, .5, .4, .3, .295 -> s_2 = .1, s_3 = .1, s_4 = .005 -> switch after step 4 (5 sketch steps)
    distances = [None, 0.5, 0.4, 0.3, 0.295, 0.29, 0.28, 0.27, 0.26, 0.25]
    switched, metrics = drive(AdaptivePolicy(config), distances, 10)
    assert switched == 5
    assert metrics[:2] == [None, None]
    assert metrics[2] == pytest.approx(0.1)


def test_adaptive_ignores_increases_and_respects_min_and_max():
    config = SRDConfig(threshold=0.01, min_sketch_steps=5, max_sketch_steps=7)
    # s is negative (d growing) every step: only the max bound can switch
    distances = [None] + [0.1 * i for i in range(1, 20)]
    switched, _ = drive(AdaptivePolicy(config), distances, 20)
    assert switched == 7
    # settled at step 2 already, but min_sketch_steps=5 holds it back until n = 5
    distances = [None, 0.5, 0.495, 0.49, 0.485, 0.48, 0.47, 0.46]
    switched, _ = drive(AdaptivePolicy(config), distances, 20)
    assert switched == 5


def test_adaptive_never_switches_at_the_last_step():
    config = SRDConfig(min_sketch_steps=1, max_sketch_steps=3)
    switched, _ = drive(AdaptivePolicy(config), [None, 0.1, 0.1], 3)
    assert switched == 3  # n == N: nothing left to render


def test_start_resets_state():
    policy = AdaptivePolicy(SRDConfig(min_sketch_steps=1))
    drive(policy, [None, 0.5, 0.4], 10)
    policy.start(TIMESTEPS, 1000)
    assert policy.update(0, None).metric is None
    assert policy.update(1, 0.3).metric is None  # no d_0 carried over from the last run


def test_first_phase_for_zero_steps():
    assert make_policy(SRDConfig(switch="step", switch_step=0)).start(TIMESTEPS, 1000) == RENDER
    assert make_policy(SRDConfig()).start(TIMESTEPS, 1000) == SKETCH
