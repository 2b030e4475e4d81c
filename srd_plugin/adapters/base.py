"""The adapter protocol: everything the core needs to know about one host family.

An adapter answers four questions for the runtime:
  * which module is the sketcher, and can this renderer replace it (`compatibility_problems`);
  * how a renderer given as a path is loaded (`load_renderer`);
  * how to call the renderer with the arguments the host meant for the sketcher, with the
    result in the sketcher's parametrization (`render`);
  * what the guided x0 prediction of a step is (`predict_x0`), for the adaptive policy;
  * how the host runs classifier-free guidance (`cfg_layout`), for `render_guidance="off"`;
  * what one model call costs in FLOPs (`flops_per_call`), for `target_speedup`.

Adapters are stateless objects; per-pipeline facts go on the session.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..config import SRDConfig
    from ..runtime import Session

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

TWO_CALLS = "two_calls"
BATCHED = "batched"


@dataclass(frozen=True)
class CFGLayout:
    """How a host runs classifier-free guidance; `render_guidance="off"` needs it to drop guidance.

    calls: "two_calls" (the model is called twice per step, the conditional call first, each
        under diffusers' `cache_context(name)`: Wan, SkyReels, Kandinsky, Cosmos) or "batched"
        (one call per step whose batch holds both halves: CogVideoX, LTX).
    cond_context / uncond_context: two_calls: the `cache_context` names of the two calls.
    batch_arguments: batched: the forward arguments that carry the doubled batch (sliced to
        the conditional half; other arguments pass unchanged).
    cond_half: batched: 1 when the batch is [uncond, cond] (diffusers' order), 0 for [cond, uncond].
    """

    calls: str
    cond_context: str = "cond"
    uncond_context: str = "uncond"
    batch_arguments: tuple[str, ...] = ()
    cond_half: int = 1

    def __post_init__(self) -> None:
        if self.calls not in (TWO_CALLS, BATCHED):
            raise ValueError(f"CFGLayout.calls={self.calls!r}: choose {TWO_CALLS!r} or {BATCHED!r}")
        if self.calls == BATCHED and (not self.batch_arguments or self.cond_half not in (0, 1)):
            raise ValueError("a batched CFGLayout needs batch_arguments (forward argument names) and cond_half 0 or 1")


class Adapter:
    """Base class with the family-independent parts; subclasses fill in the rest."""

    #: short name shown in traces and `srd doctor`
    name: str = "base"
    #: pipeline class names this adapter supports (for error messages and `srd doctor`)
    pipeline_classes: tuple[str, ...] = ()
    #: how the host runs classifier-free guidance; None: unknown, so `render_guidance="off"` is refused
    cfg_layout: CFGLayout | None = None

    # -- the host ----------------------------------------------------------------------
    def check_pipeline(self, pipe: Any) -> None:
        """Raise `UnsupportedPipelineError` if this particular pipeline cannot be served."""

    def sketcher(self, pipe: Any) -> torch.nn.Module:
        """The host module the pipeline calls every step (the sketcher)."""
        return pipe.transformer

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

    # -- guidance and cost -----------------------------------------------------------------
    def guidance_active(self, pipe: Any) -> bool:
        """Whether the host's current call runs classifier-free guidance (asked once per call,
        when its timesteps are set). Default: the pipeline's `do_classifier_free_guidance`
        property, else `guidance_scale > 1`, diffusers' rule."""
        active = getattr(pipe, "do_classifier_free_guidance", None)
        if isinstance(active, bool):
            return active
        scale = getattr(pipe, "guidance_scale", None)
        return isinstance(scale, (int, float)) and scale > 1.0

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Multiply-adds of one forward call of `model` with these (named) arguments, from its
        config and the call's token count; None: no FLOP model (then `target_speedup` is refused).
        Only ratios of these figures are used, so linear layers and attention suffice."""
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


def dit_macs(layers: int, dim: int, ffn_dim: int, tokens: int, text_tokens: int, joint: bool, batch: int = 1) -> float:
    """Multiply-adds of a DiT forward: per block, the attention projections (q, k, v, out), the
    attention itself (QK^T and AV) and a two-layer MLP; norms, embeddings and heads neglected.

    joint=True: text and video tokens attend together (CogVideoX, LTX's self-attention sees no
    text: pass joint=False there); joint=False: self-attention over the video tokens plus a
    cross-attention from video to text (Wan: q and out on video tokens, k and v on text tokens).
    """
    if joint:
        n = tokens + text_tokens
        block = 4 * n * dim * dim + 2 * n * n * dim + 2 * n * dim * ffn_dim
    else:
        n, m = tokens, text_tokens
        self_attention = 4 * n * dim * dim + 2 * n * n * dim
        cross_attention = 2 * n * dim * dim + 2 * m * dim * dim + 2 * n * m * dim
        block = self_attention + cross_attention + 2 * n * dim * ffn_dim
    return float(batch * layers * block)


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
