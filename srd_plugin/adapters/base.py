"""The adapter protocol: everything the core needs to know about one host family.

An adapter answers four questions for the runtime:
  * which module is the sketcher, and can this renderer replace it (`compatibility_problems`);
  * how a renderer given as a path is loaded (`load_renderer`);
  * how to call the renderer with the arguments the host meant for the sketcher, with the
    result in the sketcher's parametrization (`render`);
  * what the guided x0 prediction of a step is (`predict_x0`), for the adaptive policy.

Adapters are stateless objects; per-pipeline facts go on the session.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..config import SRDConfig
    from ..runtime import Session

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Adapter:
    """Base class with the family-independent parts; subclasses fill in the rest."""

    #: short name shown in traces and `srd doctor`
    name: str = "base"
    #: pipeline class names this adapter supports (for error messages and `srd doctor`)
    pipeline_classes: tuple[str, ...] = ()

    # -- the host ----------------------------------------------------------------------
    def check_pipeline(self, pipe: Any) -> None:
        """Raise `UnsupportedPipelineError` if this particular pipeline cannot be served."""

    def sketcher(self, pipe: Any) -> torch.nn.Module:
        """The host module the pipeline calls every step (the sketcher)."""
        return pipe.transformer

    def routed_modules(self, pipe: Any) -> tuple[torch.nn.Module, ...]:
        """Every host module whose calls the renderer takes over from the switch step on.

        Default: the sketcher alone. A host with several denoisers (Wan2.2's two experts) names
        them all, so the renderer replaces whichever one the host calls in a render step.
        """
        return (self.sketcher(pipe),)

    def loop_timestep(self, args: tuple, kwargs: dict[str, Any]) -> float | None:
        """The timestep of a model call as a number, if the call carries one value for the whole
        batch (None otherwise: per-token or per-frame timesteps).

        The runtime looks the loop's first timestep up in the schedule, so a host whose loop runs
        only the tail of its schedule (video-to-video `strength`) is sized by the steps it runs.
        Default: the `timestep` keyword, else the second positional argument (diffusers' layout).
        """
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if not isinstance(timestep, (torch.Tensor, int, float)):
            return None
        values = torch.as_tensor(timestep).reshape(-1)
        if values.numel() == 0 or not bool((values == values[0]).all()):
            return None
        return float(values[0])

    def first_observed_step(self, pipe: Any, timesteps: list[float], num_train_timesteps: int) -> int:
        """The first step of the run the adaptive policy observes and may switch after (default 0).

        A host whose early steps are not comparable with its later ones (Wan2.2: another expert
        before its boundary) starts the adaptive rule later.
        """
        return 0

    # -- the renderer ------------------------------------------------------------------
    def transformer_class(self, pipe: Any) -> type:
        """The class used to load a renderer from a path: the host's own."""
        return type(self.sketcher(pipe))

    def load_renderer(self, source: str | os.PathLike, pipe: Any, config: SRDConfig) -> torch.nn.Module:
        """Load a renderer from a local folder or a hub repo id with the host's transformer class.

        A pipeline folder (one with model_index.json) means its `transformer` subfolder.
        The renderer is loaded in the sketcher's dtype unless `config.renderer_dtype` says otherwise.
        """
        cls = self.transformer_class(pipe)
        dtype = _dtype_of(config.renderer_dtype) or module_dtype(self.sketcher(pipe))
        path = os.fspath(source)
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "model_index.json")):
                return cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
            if os.path.isfile(os.path.join(path, "config.json")):
                return cls.from_pretrained(path, torch_dtype=dtype)
            raise ValueError(
                f"renderer folder {path!r} holds neither model_index.json (a pipeline) nor config.json "
                "(a transformer); point to the renderer pipeline folder or its transformer subfolder"
            )
        if os.path.exists(path) or not _REPO_ID.match(path):
            raise ValueError(
                f"renderer path {path!r} does not exist; pass an existing folder, a hub repo id "
                "such as 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', or a loaded transformer module"
            )
        try:
            return cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        except OSError as error:
            raise ValueError(
                f"could not load the renderer {path!r} from the hub ({error}); download it first and pass the "
                "local folder, or pass a loaded transformer module"
            ) from error

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """Every reason the renderer cannot replace the sketcher, one line each (empty: compatible)."""
        return []

    def prepare_session(self, session: Session) -> None:
        """Compute per-pipeline facts the adapter needs at render time (called by `enable`)."""

    # -- a step --------------------------------------------------------------------------
    def render(self, session: Session, call: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Call the renderer in place of the sketcher and return the sketcher's kind of output.

        Default: cast floating tensors to the renderer's dtype on the way in and back to
        the sketcher's dtype on the way out (a no-op when they match).
        """
        args = cast_floating(args, session.renderer_dtype)
        kwargs = cast_floating(kwargs, session.renderer_dtype)
        return cast_floating(call(*args, **kwargs), session.sketcher_dtype)

    def predict_x0(
        self, scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, step_index: int
    ) -> torch.Tensor:
        """The guided x0 prediction of step `step_index`, in float32."""
        raise NotImplementedError(f"the {self.name} adapter does not implement predict_x0")

    def scheduler_problem(self, scheduler: Any) -> str | None:
        """Why `predict_x0` cannot serve this scheduler (None if it can)."""
        return None


# -- helpers shared by adapters --------------------------------------------------------
def _dtype_of(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The compute dtype of a module: diffusers' own answer (which skips modules kept in float32),
    else the dtype of its first floating parameter (float32 if it has none)."""
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (cpu if it has none)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor inside tuples, lists, dicts and ModelOutputs to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(cast_floating(v, dtype) for v in value)
    if isinstance(value, list):
        return [cast_floating(v, dtype) for v in value]
    if isinstance(value, dict):
        cast = {k: cast_floating(v, dtype) for k, v in value.items()}
        if type(value) is dict:
            return cast
        # ModelOutput and friends: same class, same fields
        return type(value)(**cast)
    return value


def all_finite(value: Any) -> bool:
    """True when every floating tensor inside `value` is free of NaN and Inf."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return all(all_finite(v) for v in value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    return True


def flow_x0(scheduler: Any, model_output: torch.Tensor, sample: torch.Tensor, step_index: int) -> torch.Tensor:
    """x0 = x_t - sigma_t * v for flow-matching schedulers (sigma from the scheduler's own table)."""
    sigma = float(scheduler.sigmas[step_index])
    return sample.float() - sigma * model_output.float()


def config_mismatches(sketcher: torch.nn.Module, renderer: torch.nn.Module, keys: dict[str, str]) -> list[str]:
    """Compare config entries that must agree; `keys` maps config key -> what it means."""
    problems = []
    for key, meaning in keys.items():
        ours, theirs = sketcher.config.get(key), renderer.config.get(key)
        if _normalise(ours) != _normalise(theirs):
            problems.append(f"{meaning} ({key}): sketcher has {ours!r}, renderer has {theirs!r}")
    return problems


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
