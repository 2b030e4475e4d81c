"""The adapter protocol: everything the core needs to know about one host family.

An adapter answers four questions for the runtime:
  * which module is the sketcher, and can this renderer replace it (`compatibility_problems`);
  * how a renderer given as a path is loaded (`load_renderer`);
  * how to call the renderer with the arguments the host meant for the sketcher, with the
    result in the sketcher's parametrization (`render`);
  * what the guided x0 prediction of a step is (`predict_x0`), for the adaptive policy;
  * how the host runs classifier-free guidance (`cfg_layout`), for `render_guidance="off"`;
  * what one model call costs in FLOPs (`flops_per_call`), for `target_speedup`.

Adapters are stateless objects; per-pipeline facts go on the session. The contract names the
session by the `AdapterSession` protocol below, not by the runtime's class, so this module does
not depend on the runtime (the runtime depends on it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..errors import UnsupportedPipelineError
from ..hookspecs import hookimpl
from ..parametrization import scheduler_x0, x0_problem

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..config import SRDConfig

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

TWO_CALLS = "two_calls"
BATCHED = "batched"


@dataclass(frozen=True)
class CFGLayout:
    """How a host runs classifier-free guidance; `render_guidance="off"` needs it to drop guidance.

    calls: "two_calls" (the model is called twice per step, the conditional call first: Wan,
        SkyReels, Cosmos, Kandinsky 5) or "batched" (one call per step whose batch holds both
        halves: CogVideoX, LTX).
    cond_context / uncond_context: two_calls: how the negative call is recognised.
        Names: the host runs each call under diffusers' `cache_context(name)` (Wan, SkyReels),
        and the call under `uncond_context` is the negative one. None (both): the host uses no
        cache context (Cosmos, Kandinsky 5), so the negative call is recognised by its order:
        the second model call of a step (the first is the conditional one). A call that arrives
        outside any cache context is recognised by its order under named contexts too
        (WanVideoToVideoPipeline, served by the Wan adapter, runs none).
    batch_arguments: batched: the forward arguments that carry the doubled batch (sliced to
        the conditional half; other arguments pass unchanged).
    cond_half: batched: 1 when the batch is [uncond, cond] (diffusers' order), 0 for [cond, uncond].
    """

    calls: str
    cond_context: str | None = "cond"
    uncond_context: str | None = "uncond"
    batch_arguments: tuple[str, ...] = ()
    cond_half: int = 1

    def __post_init__(self) -> None:
        if self.calls not in (TWO_CALLS, BATCHED):
            raise ValueError(f"CFGLayout.calls={self.calls!r}: choose {TWO_CALLS!r} or {BATCHED!r}")
        if self.calls == BATCHED and (not self.batch_arguments or self.cond_half not in (0, 1)):
            raise ValueError("a batched CFGLayout needs batch_arguments (forward argument names) and cond_half 0 or 1")
        if (self.cond_context is None) != (self.uncond_context is None):
            raise ValueError(
                "CFGLayout: name both cache contexts (cond_context, uncond_context) or neither (None, None: the "
                "negative call is the second call of a step)"
            )

    @property
    def by_order(self) -> bool:
        """Whether the negative call is recognised by its order in the step (a host without cache contexts)."""
        return self.calls == TWO_CALLS and self.uncond_context is None


class AdapterSession(Protocol):
    """What the base adapter reads of the session it is handed (`srd_plugin.runtime.Session` is one).

    Concrete adapters may read more of the runtime's session; they live above the core.
    """

    sketcher_dtype: torch.dtype
    renderer_dtype: torch.dtype


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
                return cls.from_pretrained(path, subfolder="transformer", dtype=dtype)
            if os.path.isfile(os.path.join(path, "config.json")):
                return cls.from_pretrained(path, dtype=dtype)
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
            return cls.from_pretrained(path, subfolder="transformer", dtype=dtype)
        except OSError as error:
            raise ValueError(
                f"could not load the renderer {path!r} from the hub ({error}); download it first and pass the "
                "local folder, or pass a loaded transformer module"
            ) from error

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """Every reason the renderer cannot replace the sketcher, one line each (empty: compatible)."""
        return []

    def prepare_session(self, session: AdapterSession) -> None:
        """Compute per-pipeline facts the adapter needs at render time (called by `enable`)."""

    # -- a step --------------------------------------------------------------------------
    def render(self, session: AdapterSession, call: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
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
        """The guided x0 prediction of step `step_index`, in float32.

        Default: from the scheduler's own parametrization (`srd_plugin.parametrization`), which
        serves flow-matching, variance-preserving and k-diffusion schedulers; override only for a
        family whose host wraps the model call in a parametrization of its own.
        """
        return scheduler_x0(scheduler, model_output, timestep, sample)

    def predict_x0_from_step(self, scheduler: Any, arguments: dict[str, Any], step_index: int) -> torch.Tensor:
        """x0 from every argument the host passed to `scheduler.step` (bound by name).

        Default: `predict_x0` on model_output, timestep and sample. Override when the step's
        other arguments change the parametrization (LTX's `per_token_timesteps`).
        """
        return self.predict_x0(
            scheduler, arguments["model_output"], arguments.get("timestep"), arguments["sample"], step_index
        )

    def scheduler_problem(self, scheduler: Any) -> str | None:
        """Why `predict_x0` cannot serve this scheduler (None if it can)."""
        return x0_problem(scheduler)

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
    """x0 = x_t - sigma_t * v with sigma from the flow scheduler's table at `step_index` (for adapters whose
    loop keeps its own step count; the default `Adapter.predict_x0` finds the scheduler's index itself)."""
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


# -- a declared flow-matching family -----------------------------------------------------
def _diffusers_classes(names: tuple[str, ...]) -> tuple[type, ...]:
    import diffusers

    return tuple(cls for cls in (getattr(diffusers, name, None) for name in names) if isinstance(cls, type))


class FamilyAdapter(Adapter):
    """A host family, declared rather than programmed; every built-in adapter is one.

    A subclass states which pipelines it serves, the transformer class, the config entries that
    must agree between sketcher and renderer, and a renderer to name in errors; it overrides
    only what its host really does differently (`extra_problems` for rules beyond equal config
    entries, `render` for per-model inputs, `predict_x0` where the host wraps the model call in a
    parametrization of its own; x0 otherwise comes from the scheduler's, see `parametrization.py`).

    The adapter object is also its plugin: `srd_get_adapter` and `srd_supported_pipelines` are
    hook implementations, so a family module ends with

        ADAPTER = MyAdapter()
        srd_get_adapter = ADAPTER.srd_get_adapter
        srd_supported_pipelines = ADAPTER.srd_supported_pipelines

    (or registers the instance itself as the entry point). `srd_check_setup` refuses the CogVideoX
    alignment fields, which mean nothing for a family whose sizes share one latent space; a family
    that uses them (CogVideoX) does not export it.
    """

    #: the diffusers class every sketcher and renderer of the family is an instance of
    transformer_class_name: str = ""
    #: config entries that must agree between sketcher and renderer: key -> what it means
    must_match: dict[str, str] = {}
    #: a renderer to suggest when another family's model is passed (a hub repo id)
    renderer_example: str = ""

    # -- the host ------------------------------------------------------------------------
    def serves(self, pipe: Any) -> bool:
        """True for instances of the declared pipeline classes (subclasses included)."""
        classes = _diffusers_classes(self.pipeline_classes)
        return bool(classes) and isinstance(pipe, classes)

    def check_pipeline(self, pipe: Any) -> None:
        if getattr(pipe, "transformer", None) is None:
            raise UnsupportedPipelineError(pipe, list(self.pipeline_classes), reason="the pipeline has no transformer")

    # -- the renderer --------------------------------------------------------------------
    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        if not self.is_family(renderer):
            example = f" (e.g. {self.renderer_example})" if self.renderer_example else ""
            return [
                f"model family: the sketcher is a {self.transformer_class_name}, the renderer a "
                f"{type(renderer).__name__}; pass a {self.transformer_class_name}{example}"
            ]
        return config_mismatches(sketcher, renderer, self.must_match) + self.extra_problems(sketcher, renderer)

    def is_family(self, model: torch.nn.Module) -> bool:
        """True for an instance of the declared transformer class (subclasses included)."""
        classes = _diffusers_classes((self.transformer_class_name,))
        return not classes or isinstance(model, classes)

    def extra_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """Family rules beyond equal config entries (none by default)."""
        return []

    # -- the plugin ----------------------------------------------------------------------
    @hookimpl
    def srd_get_adapter(self, pipe: Any) -> Adapter | None:
        return self if self.serves(pipe) else None

    @hookimpl
    def srd_supported_pipelines(self) -> list[str]:
        return list(self.pipeline_classes)

    @hookimpl
    def srd_check_setup(self, session: Any) -> list[str] | None:
        """The renderer's VAE, where its pipeline folder shows it, must be the host's; the alignment
        fields (for families whose sizes use different latent parametrizations) do not apply."""
        if session.adapter is not self:
            return None
        problems = [
            f"SRDConfig.{name}={getattr(session.config, name)!r} applies to pairs with different latent "
            f"parametrizations (CogVideoX); the {self.name} sketcher and renderer share the VAE and the flow "
            "schedule, so drop it"
            for name in ("renderer_scaling_factor", "renderer_scheduler_config")
            if getattr(session.config, name, None) is not None
        ]
        return problems + vae_folder_problems(session.pipe, session.renderer_source)


#: VAE config entries that do not describe the latent space
_VAE_BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def vae_folder_problems(pipe: Any, source: str | None) -> list[str]:
    """One line if the renderer's pipeline folder holds a VAE other than the host's (every differing
    config entry named); nothing when the folder has no VAE or the renderer is not a local folder."""
    vae = getattr(pipe, "vae", None)
    if source is None or vae is None or not os.path.isdir(source):
        return []
    path = os.path.join(source, "vae", "config.json")
    if not os.path.isfile(os.path.join(source, "model_index.json")) or not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            theirs = json.load(handle)
    except (OSError, ValueError) as error:
        return [f"{path}: could not be read as JSON ({error})"]
    ours = dict(vae.config)
    differing = []
    if theirs.get("_class_name") not in (None, type(vae).__name__):
        differing.append(f"class {theirs.get('_class_name')} vs the host's {type(vae).__name__}")
    for key in sorted(set(ours) | set(theirs)):
        if key in _VAE_BOOKKEEPING or key.startswith("_"):
            continue
        if key in theirs and key in ours and _normalise_json(theirs[key]) != _normalise_json(ours[key]):
            differing.append(f"{key}: renderer {theirs[key]!r}, host {ours[key]!r}")
    if not differing:
        return []
    return [
        f"VAE: the renderer's pipeline folder {source} has another VAE than the host ({'; '.join(differing)}); "
        "sketcher and renderer must share one latent space, so pair checkpoints that use the same VAE"
    ]


def _normalise_json(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise_json(v) for v in value)
    return value
