"""The guided x0 of a step, from the scheduler's own parametrization.

The adaptive policy watches the guided x0 prediction. Which formula gives x0 is a fact of the
*scheduler* the host runs, not of the model family: the same CogVideoXPipeline runs with a
v-prediction CogVideoXDDIMScheduler or with diffusers' plain epsilon `DDIMScheduler()`, and a
WanPipeline with a flow UniPC or a flow Euler scheduler. Three families of diffusers schedulers
cover what video pipelines run with:

* **flow matching** (`FlowMatch*`, or `use_flow_sigmas` / `prediction_type="flow_prediction"`):
  x_t = (1 - sigma) x0 + sigma noise, the model predicts v = noise - x0, so x0 = x_t - sigma v;
* **variance preserving** (DDIM, DDPM, DPM-Solver, UniPC, CogVideoX's: an `alphas_cumprod`
  table, samples not scaled): x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, with `epsilon`,
  `v_prediction` or `sample` prediction;
* **variance exploding, k-diffusion style** (Euler, Heun, LMS, KDPM2: `init_noise_sigma > 1`):
  x_t = x0 + sigma eps and the model sees x_t / sqrt(sigma^2 + 1).

The noise level is read at the scheduler's *own* position: its `step_index` when it has one,
else its `begin_index` (video-to-video pipelines start mid-schedule through `set_begin_index`),
else where the step's timestep stands in its table (Wan's video-to-video slices the timesteps
without `set_begin_index`; the scheduler itself finds its place by value). A scheduler none of
this describes is refused by `enable`, before any work, with the reason.
"""

from __future__ import annotations

from typing import Any

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def scheduler_kind(scheduler: Any) -> str | None:
    """"flow", "vp" (alphas_cumprod), "ve" (k-diffusion sigmas), or None if x0 cannot be derived."""
    config = getattr(scheduler, "config", {}) or {}
    sigmas = getattr(scheduler, "sigmas", None)
    flow = (
        "FlowMatch" in type(scheduler).__name__
        or config.get("use_flow_sigmas", False)
        or config.get("prediction_type") == "flow_prediction"
    )
    if flow:
        return "flow" if sigmas is not None else None
    if sigmas is not None and _init_noise_sigma(scheduler) > 1.0:
        return "ve"
    if isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
        return "vp"
    return None


def x0_problem(scheduler: Any) -> str | None:
    """Why x0 cannot be derived for this scheduler (None when it can)."""
    kind = scheduler_kind(scheduler)
    name = type(scheduler).__name__
    if kind is None:
        return (
            f"the adaptive policy needs the guided x0 of each step, and {name} has neither a flow-matching sigma "
            "table, nor an alphas_cumprod table, nor k-diffusion sigmas to derive it from; use one of diffusers' "
            "schedulers, or a policy that needs no x0 (switch='step' or 'ratio')"
        )
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if kind != "flow" and prediction not in PREDICTION_TYPES:
        return (
            f"the adaptive policy cannot derive x0 from {name} with prediction_type={prediction!r}; supported: "
            f"{', '.join(PREDICTION_TYPES)} (and flow matching), or use switch='step' or 'ratio'"
        )
    return None


def scheduler_x0(scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """x0 implied by `model_output` at this step, in float32, in the sample's space."""
    kind = scheduler_kind(scheduler)
    out, x = model_output.float(), sample.float()
    if kind == "flow":
        return x - _sigma(scheduler, timestep) * out
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if kind == "ve":
        sigma = _sigma(scheduler, timestep)
        if prediction == "sample":
            return out
        if prediction == "epsilon":
            return x - sigma * out
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    abar = float(scheduler.alphas_cumprod[_train_index(scheduler, timestep)].double())
    if prediction == "sample":
        x0 = out
    elif prediction == "epsilon":
        x0 = (x - (1.0 - abar) ** 0.5 * out) / abar**0.5
    else:
        x0 = abar**0.5 * x - (1.0 - abar) ** 0.5 * out
    if scheduler.config.get("clip_sample", False):  # what DDIM / DDPM themselves do with their x0
        bound = float(scheduler.config.get("clip_sample_range", 1.0))
        x0 = x0.clamp(-bound, bound)
    return x0


def schedule_index(scheduler: Any, timestep: Any, fallback: int | None = None) -> int:
    """The scheduler's own index of the step about to be taken (see the module docstring): its
    `step_index`, else its `begin_index`, else where `timestep` stands in its table, else `fallback`.
    Differs from the run's step count when a host runs only the tail of the schedule."""
    index = getattr(scheduler, "step_index", None)
    if index is not None:
        return int(index)
    begin = getattr(scheduler, "begin_index", None)
    if begin is not None:
        return int(begin)
    if timestep is not None:
        try:
            if hasattr(scheduler, "index_for_timestep"):
                return int(scheduler.index_for_timestep(_as_tensor(timestep, scheduler)))
            return int((scheduler.timesteps.float() - float(_scalar(timestep))).abs().argmin())
        except (IndexError, RuntimeError, ValueError, AttributeError):
            pass
    if fallback is None:
        raise ValueError(f"cannot locate timestep {timestep!r} in the schedule of {type(scheduler).__name__}")
    return fallback


def _sigma(scheduler: Any, timestep: Any) -> float:
    return float(scheduler.sigmas[schedule_index(scheduler, timestep)])


def _train_index(scheduler: Any, timestep: Any) -> int:
    """alphas_cumprod is indexed by the training timestep itself (DDIM-style discrete timesteps)."""
    return int(round(float(_scalar(timestep))))


def _init_noise_sigma(scheduler: Any) -> float:
    try:
        return float(getattr(scheduler, "init_noise_sigma", 1.0))
    except (TypeError, RuntimeError, ValueError):
        return 1.0


def _scalar(timestep: Any) -> Any:
    if isinstance(timestep, torch.Tensor):
        return timestep.flatten()[0]
    return timestep


def _as_tensor(timestep: Any, scheduler: Any) -> torch.Tensor:
    value = _scalar(timestep)
    if isinstance(value, torch.Tensor):
        return value.to(scheduler.timesteps.device)
    return torch.tensor(value, device=scheduler.timesteps.device)
