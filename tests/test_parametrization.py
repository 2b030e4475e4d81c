"""x0 from the scheduler's own parametrization (srd_plugin/parametrization.py).

The oracle is the scheduler itself: every diffusers scheduler that returns `pred_original_sample`
from `step` computes x0 its own way; ours must agree, for each prediction type, from the start of
the schedule and from the middle of it (video-to-video pipelines start there).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

import srd_plugin as srd
from srd_plugin.parametrization import scheduler_kind, scheduler_x0, x0_problem
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_renderer

SCHEDULERS = [
    (DDIMScheduler, "epsilon"),
    (DDIMScheduler, "v_prediction"),
    (DDIMScheduler, "sample"),
    (lambda **kw: DDIMScheduler(clip_sample=False, **kw), "epsilon"),
    (DDPMScheduler, "epsilon"),
    (DDPMScheduler, "v_prediction"),
    (EulerDiscreteScheduler, "epsilon"),
    (EulerDiscreteScheduler, "v_prediction"),
    (EulerAncestralDiscreteScheduler, "epsilon"),
]


def _steps(scheduler, begin: int, count: int = 4):
    """(x0 of ours, x0 of the scheduler) for `count` steps from `begin`, with random model outputs."""
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(10)
    if begin and hasattr(type(scheduler), "set_begin_index"):  # DDIM / DDPM index by the timestep value
        scheduler.set_begin_index(begin)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * float(scheduler.init_noise_sigma)
    pairs = []
    for t in scheduler.timesteps[begin : begin + count]:
        output = torch.randn(sample.shape, generator=generator)
        ours = scheduler_x0(scheduler, output, t, sample)
        result = scheduler.step(output, t, sample, generator=generator)
        pairs.append((ours, result.pred_original_sample.float()))
        sample = result.prev_sample
    return pairs


@pytest.mark.parametrize("cls,prediction", SCHEDULERS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("begin", [0, 5])
def test_x0_equals_the_schedulers_own(cls, prediction, begin):
    scheduler = cls(prediction_type=prediction)  # DDIM / DDPM clip x0 by default: ours must too
    assert x0_problem(scheduler) is None
    for ours, theirs in _steps(scheduler, begin):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_flow_x0_at_the_schedulers_own_index():
    """Flow matching: x0 = x - sigma v with sigma where the scheduler stands, also when the loop starts
    mid-schedule without set_begin_index (Wan video-to-video slices the timesteps)."""
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    scheduler.set_timesteps(10)
    sample, v = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    for index in (0, 4):
        t = scheduler.timesteps[index]
        expected = sample - float(scheduler.sigmas[index]) * v
        assert torch.equal(scheduler_x0(scheduler, v, t, sample), expected)
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(10)
    euler.set_begin_index(3)
    expected = sample - float(euler.sigmas[3]) * v
    assert torch.equal(scheduler_x0(euler, v, euler.timesteps[3], sample), expected)


def test_kinds_and_refusals():
    assert scheduler_kind(FlowMatchEulerDiscreteScheduler()) == "flow"
    assert scheduler_kind(DDIMScheduler()) == "vp"
    assert scheduler_kind(EulerDiscreteScheduler()) == "ve"

    class Opaque:
        config = {}

    assert "neither a flow-matching sigma" in x0_problem(Opaque())
    odd = DDIMScheduler()
    odd.register_to_config(prediction_type="velocity")
    assert "prediction_type='velocity'" in x0_problem(odd)


def test_enable_refuses_a_scheduler_without_x0_before_any_change():
    pipe = tiny_wan_pipeline()

    class NoTables:
        config = {"num_train_timesteps": 1000}

        def set_timesteps(self, *args, **kwargs):
            pass

        def step(self, *args, **kwargs):
            pass

    pipe.scheduler = NoTables()
    with pytest.raises(ValueError, match="scheduler: the adaptive policy needs the guided x0"):
        srd.enable(pipe, tiny_wan_renderer())
    assert not srd.is_enabled(pipe) and not hasattr(pipe.transformer, "_diffusers_hook")
    srd.enable(pipe, tiny_wan_renderer(), switch="step", switch_step=2)  # no x0 needed: accepted
    srd.disable(pipe)


def test_wan_adaptive_with_a_k_diffusion_scheduler_runs():
    """A Wan pipeline given a non-flow scheduler: served, not refused (random weights)."""
    pipe = tiny_wan_pipeline()
    pipe.scheduler = EulerDiscreteScheduler(prediction_type="v_prediction")
    srd.enable(pipe, tiny_wan_renderer(), min_sketch_steps=2, max_sketch_steps=3)
    pipe(**tiny_call_kwargs(num_inference_steps=5))
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.switch_step in (2, 3) and trace.distances[1] is not None
    srd.disable(pipe)
