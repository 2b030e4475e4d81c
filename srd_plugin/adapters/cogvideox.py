"""Adapter for diffusers' CogVideoXPipeline (text-to-video: CogVideoX-5B sketches, 2B renders).

What differs from Wan, and how this adapter deals with it:

* **CFG is one call with a doubled batch** (`cache_context("cond_uncond")`), latents are
  [B, F, C, H, W], the timestep is an integer tensor of shape [B].
* **Rotary embeddings are computed once, before the loop, from `pipe.transformer.config`**
  and passed to every call. A renderer without rotary embeddings (CogVideoX-2B) must get
  `image_rotary_emb=None`; a renderer with rotary embeddings gets its own, computed from its
  own config exactly as the pipeline's `_prepare_rotary_positional_embeddings` would
  (cached per latent shape and device on the session).
* **The two models do not share a parametrization** (VAE scaling 0.7 vs 1.15258426,
  `snr_shift_scale` 1.0 vs 3.0). Each pipeline call builds a `LatentAlignment` from the
  host's parametrization (its VAE scaling factor and its scheduler's `alphas_cumprod`) and
  the renderer's (from `SRDConfig.renderer_scaling_factor` / `renderer_scheduler_config`,
  else from the renderer's pipeline folder, else the host's). With `align="auto"` the
  renderer call is aligned only when the two differ; identical parametrizations (or
  `align="none"`) give the plain swap, bit for bit. See docs/alignment.md.
* **Dtypes**: the renderer may run in its own dtype (2B: fp16, 5B: bf16); latents and text
  embeddings are cast at the border, rotary tables stay float32 as the pipeline makes them,
  and the alignment arithmetic runs in float32 with float64 coefficients.
* **Schedulers** (CogVideoXDDIMScheduler, CogVideoXDPMScheduler) are v-prediction:
  x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v with abar from the scheduler's own table.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..hookspecs import hookimpl
from .alignment import LatentAlignment, Match, Parametrization, table_problem
from .base import BATCHED, CFGLayout, FamilyAdapter, cast_floating, dit_macs

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

PLUGIN_KEY = "cogvideox"

#: config entries that must agree between sketcher and renderer, with what they mean
COGVIDEOX_MUST_MATCH = {
    "in_channels": "latent channels",
    "out_channels": "output channels",
    "patch_size": "spatial patch size",
    "patch_size_t": "temporal patch size (CogVideoX 1.5)",
    "text_embed_dim": "text embedding width",
    "ofs_embed_dim": "ofs embedding (CogVideoX 1.5 I2V models)",
}

#: the renderer-side arguments that carry activations and are cast to the renderer's dtype
CAST_ARGUMENTS = ("hidden_states", "encoder_hidden_states", "timestep_cond")


@dataclass
class RendererParametrization:
    """What is known of the renderer's parametrization; None parts are the host's."""

    scaling_factor: float | None = None
    scaling_source: str = "the host's"
    alphas_cumprod: torch.Tensor | None = None
    scheduler_source: str = "the host's"


@dataclass
class SessionState:
    """Per-pipeline facts: the renderer's parametrization and its rotary tables."""

    renderer: RendererParametrization
    rotary: dict[tuple, Any] = field(default_factory=dict)


@dataclass
class RunState:
    """Per-call facts: the alignment of this call (None: the plain swap)."""

    alignment: LatentAlignment | None
    clamp_reported: bool = False


#: the pipelines served: text-to-video, video-to-video (`strength` runs the tail of the schedule: the
#: runtime sizes the run by the loop's first timestep) and image-to-video (a renderer that takes the
#: image latent; no CogVideoX-2B image-to-video model is published, so the 2B is refused there)
PIPELINE_CLASSES = ("CogVideoXPipeline", "CogVideoXVideoToVideoPipeline", "CogVideoXImageToVideoPipeline")


class CogVideoXAdapter(FamilyAdapter):
    name = "cogvideox"
    pipeline_classes = PIPELINE_CLASSES
    transformer_class_name = "CogVideoXTransformer3DModel"
    must_match = COGVIDEOX_MUST_MATCH
    renderer_example = "THUDM/CogVideoX-2b"
    #: CFG is one call on [uncond, cond]: `render_guidance="off"` renders the second half only
    cfg_layout = CFGLayout(
        calls=BATCHED, batch_arguments=("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs")
    )

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """The declared checks, with the input-channel mismatch of an image-to-video sketcher explained."""
        problems = super().compatibility_problems(sketcher, renderer)
        if _takes_image_latent(sketcher) and self.is_family(renderer) and not _takes_image_latent(renderer):
            problems[:] = [p for p in problems if "(in_channels)" not in p]
            problems.insert(
                0,
                f"image condition (in_channels): the sketcher is an image-to-video model (in_channels "
                f"{sketcher.config.in_channels}: the noisy latent and the image latent), the renderer takes "
                f"{renderer.config.in_channels} channels. No CogVideoX-2B image-to-video model is published; pass an "
                "image-to-video renderer of the CogVideoX family with the same channels",
            )
        return problems

    def extra_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        problems = []
        if renderer.config.use_learned_positional_embeddings and not sketcher.config.use_learned_positional_embeddings:
            problems.append(
                "positional embeddings: the renderer uses learned positional embeddings (an image-to-video "
                "model); a text-to-video pipeline needs a text-to-video renderer"
            )
        if not renderer.config.use_rotary_positional_embeddings:
            # sin-cos positions cover exactly max_text_seq_length text tokens (CogVideoX-2B: 226)
            ours, theirs = sketcher.config.max_text_seq_length, renderer.config.max_text_seq_length
            if ours != theirs:
                problems.append(
                    f"text length (max_text_seq_length): the sketcher has {ours}, the renderer {theirs}, and a "
                    "renderer without rotary embeddings accepts exactly its max_text_seq_length text tokens"
                )
        return problems

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Text and video tokens attend jointly; the MLP is 4x wide (diffusers' default)."""
        return cogvideox_macs(
            model.config, arguments["hidden_states"].shape, arguments["encoder_hidden_states"].shape[1]
        )

    # -- the render call -------------------------------------------------------------------
    def render(self, session: Session, call: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Call the renderer with its own rotary tables, in its own dtype and (if needed) coordinates."""
        arguments = _bind_forward(session.sketcher, args, kwargs)
        host_sample = arguments["hidden_states"]
        _check_text_length(session.renderer.config, arguments["encoder_hidden_states"])
        arguments["image_rotary_emb"] = self._renderer_rotary(session, host_sample)
        run_state = _run_state(session)
        alignment = run_state.alignment if run_state is not None else None
        match = None
        if alignment is not None:
            match = alignment.match(_timestep_tensor(arguments["timestep"], host_sample))
            _report_clamp(session, run_state, match)
            arguments["hidden_states"] = alignment.to_renderer(host_sample, match)
            arguments["timestep"] = match.tau.to(device=host_sample.device, dtype=torch.float32)
        for name in CAST_ARGUMENTS:
            if name in arguments:
                arguments[name] = cast_floating(arguments[name], session.renderer_dtype)
        output = call(**arguments)
        if alignment is not None:
            sample = alignment.to_host(_sample_of(output), host_sample, match)
            output = _with_sample(output, sample)
        return cast_floating(output, session.sketcher_dtype)

    def _renderer_rotary(self, session: Session, sample: torch.Tensor) -> Any:
        """None for a renderer without rotary embeddings, else its own (cached per shape and device)."""
        config = session.renderer.config
        if not config.use_rotary_positional_embeddings:
            return None
        state = _session_state(session)
        _, frames, _, height, width = sample.shape
        key = (frames, height, width, str(sample.device))
        if key not in state.rotary:
            state.rotary[key] = rotary_embeddings(config, frames, height, width, sample.device)
        return state.rotary[key]


def cogvideox_macs(config: Any, latent_shape: tuple[int, ...], text_tokens: int) -> float:
    """Multiply-adds of one CogVideoXTransformer3DModel call on latents [B, F, C, H, W]."""
    batch, frames, _, height, width = latent_shape
    p, p_t = config.patch_size, config.patch_size_t or 1
    tokens = ((frames + p_t - 1) // p_t) * (height // p) * (width // p)
    dim = config.num_attention_heads * config.attention_head_dim
    return dit_macs(config.num_layers, dim, 4 * dim, tokens, text_tokens, joint=True, batch=batch)


def rotary_embeddings(config: Any, frames: int, height: int, width: int, device: torch.device) -> Any:
    """`CogVideoXPipeline._prepare_rotary_positional_embeddings` for a transformer `config`.

    Takes the latent grid (frames, height, width) instead of pixels: the pipeline's
    `pixels // (vae_scale * patch)` equals `(pixels // vae_scale) // patch`, the latent size
    over the patch size.
    """
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, p_t = config.patch_size, config.patch_size_t
    grid_height, grid_width = height // p, width // p
    base_size_width, base_size_height = config.sample_width // p, config.sample_height // p
    if p_t is None:  # CogVideoX 1.0
        crops = get_resize_crop_region_for_grid((grid_height, grid_width), base_size_width, base_size_height)
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=crops,
            grid_size=(grid_height, grid_width),
            temporal_size=frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(  # CogVideoX 1.5
        embed_dim=config.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_height, grid_width),
        temporal_size=(frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_size_height, base_size_width),
        device=device,
    )


# -- the renderer's parametrization ----------------------------------------------------------
def resolve_renderer_parametrization(session: Session) -> tuple[RendererParametrization, list[str]]:
    """The renderer's scaling factor and noise table: explicit config fields win, then the
    renderer's pipeline folder or hub repo (`vae/config.json`, `scheduler/scheduler_config.json`),
    else the host's. With `align="none"` the folder is not read (the naive swap uses none of
    it; explicit fields are still checked). Returns the facts and every problem found, each
    naming where it came from."""
    config = session.config
    facts = RendererParametrization()
    problems: list[str] = []
    read = None if config.align == "none" else _folder_reader(session.renderer_source)
    scaling: tuple[Any, str] | None = None
    if config.renderer_scaling_factor is not None:
        scaling = (config.renderer_scaling_factor, "SRDConfig.renderer_scaling_factor")
    elif read is not None:
        scaling = _folder_scaling(read, session.renderer_source, problems)
    if scaling is not None:
        facts.scaling_factor, facts.scaling_source = float(scaling[0]), scaling[1]
    scheduler: tuple[dict, str] | None = None
    if config.renderer_scheduler_config is not None:
        scheduler = (config.renderer_scheduler_config, "SRDConfig.renderer_scheduler_config")
    elif read is not None:
        relative = "scheduler/scheduler_config.json"
        found = read(session.renderer_source, relative, problems)
        scheduler = (found, f"{session.renderer_source}/{relative}") if found is not None else None
    if scheduler is not None:
        table, problem = _noise_table(scheduler[0], type(session.pipe.scheduler), scheduler[1])
        if problem:
            problems.append(problem)
        else:
            facts.alphas_cumprod, facts.scheduler_source = table, scheduler[1]
    return facts, problems


def _folder_reader(source: str | None) -> Any:
    """How to read JSON files of the renderer's pipeline: from a local pipeline folder (one with
    model_index.json) or a hub repo; None when there is nothing to read (a module, a transformer
    folder: a transformer alone carries no VAE or scheduler)."""
    if source is None:
        return None
    if os.path.isdir(source):
        return _read_local_json if os.path.isfile(os.path.join(source, "model_index.json")) else None
    return _read_hub_json


def _folder_scaling(read: Any, source: str, problems: list[str]) -> tuple[float, str] | None:
    vae_config = read(source, "vae/config.json", problems)
    if vae_config is None:
        return None
    where = f"{source}/vae/config.json"
    value = vae_config.get("scaling_factor")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value), where
    problems.append(f"{where}: scaling_factor={value!r} is not a positive number")
    return None


def _read_local_json(folder: str, relative: str, problems: list[str]) -> dict | None:
    path = os.path.join(folder, *relative.split("/"))
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        problems.append(f"{path}: could not be read as JSON ({error})")
        return None


def _read_hub_json(repo_id: str, relative: str, problems: list[str]) -> dict | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, relative)
    except Exception as error:  # noqa: BLE001 - any hub failure means the same to the user
        problems.append(
            f"{repo_id}/{relative}: could not be fetched ({type(error).__name__}); pass "
            "SRDConfig.renderer_scaling_factor and renderer_scheduler_config, or a local pipeline folder"
        )
        return None
    return _read_local_json(os.path.dirname(path), os.path.basename(path), problems)


def _noise_table(scheduler_config: dict, host_class: type, where: str) -> tuple[torch.Tensor | None, str | None]:
    """The renderer's `alphas_cumprod`, from diffusers' own scheduler class built from its config
    (so `snr_shift_scale`, zero terminal SNR and the like are exactly diffusers')."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    name = scheduler_config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else host_class
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        return None, f"{where}: _class_name={name!r} is not a diffusers scheduler class"
    try:
        scheduler = cls.from_config({k: v for k, v in scheduler_config.items() if k != "_class_name"})
    except Exception as error:  # noqa: BLE001 - report any construction failure with its origin
        return None, f"{where}: {cls.__name__}.from_config failed ({type(error).__name__}: {error})"
    problem = _v_prediction_problem(scheduler, where)
    if problem:
        return None, problem
    table = scheduler.alphas_cumprod.double().cpu()
    return table, table_problem(table, where)


def _v_prediction_problem(scheduler: Any, what: str) -> str | None:
    if not isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor):
        return (
            f"{what} ({type(scheduler).__name__}) has no alphas_cumprod table; CogVideoX needs a DDPM-family "
            "v-prediction scheduler such as CogVideoXDDIMScheduler or CogVideoXDPMScheduler"
        )
    prediction = scheduler.config.get("prediction_type")
    if prediction != "v_prediction":
        return (
            f"{what} ({type(scheduler).__name__}) has prediction_type={prediction!r}; CogVideoX models predict "
            "v: use prediction_type='v_prediction'"
        )
    return None


def host_parametrization(session: Session, scheduler: Any) -> Parametrization:
    """The sketcher's parametrization: the factor the host decodes with and its scheduler's table."""
    scaling = float(session.pipe.vae_scaling_factor_image)  # what CogVideoXPipeline.decode_latents divides by
    return Parametrization(scaling, scheduler.alphas_cumprod.double().cpu(), f"host ({type(scheduler).__name__})")


def _run_alignment(session: Session, scheduler: Any) -> LatentAlignment | None:
    """This call's alignment, or None when the plain swap is exact (or asked for)."""
    facts = _session_state(session).renderer
    if session.config.align == "none" or (facts.scaling_factor is None and facts.alphas_cumprod is None):
        return None
    problem = _v_prediction_problem(scheduler, "the host scheduler")
    if problem:
        raise ValueError(f"srd_plugin cannot align the CogVideoX renderer: {problem}")
    host = host_parametrization(session, scheduler)
    renderer = Parametrization(
        facts.scaling_factor if facts.scaling_factor is not None else host.scaling_factor,
        facts.alphas_cumprod if facts.alphas_cumprod is not None else host.alphas_cumprod,
        f"renderer (scaling: {facts.scaling_source}; noise table: {facts.scheduler_source})",
    )
    return None if host.matches(renderer) else LatentAlignment(host, renderer)


# -- small helpers -----------------------------------------------------------------------------
def _session_state(session: Session) -> SessionState:
    return session.plugin_state[PLUGIN_KEY]


def _run_state(session: Session) -> RunState | None:
    run = session.active_run
    return run.plugin_state.get(PLUGIN_KEY) if run is not None else None


def _bind_forward(sketcher: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The host's call as keyword arguments, named by the sketcher class's own `forward`."""
    signature = inspect.signature(type(sketcher).forward)
    bound = signature.bind(sketcher, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))  # self
    return arguments


def _timestep_tensor(timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """The host timestep as an integer tensor with one entry per batch element."""
    t = torch.as_tensor(timestep).reshape(-1)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"CogVideoX schedulers use integer timesteps, got {t.tolist()}")
    return t.long().expand(sample.shape[0]) if t.numel() == 1 else t.long()


def _check_text_length(config: Any, text: torch.Tensor) -> None:
    """A renderer with sin-cos positions (no rotary) takes exactly max_text_seq_length text tokens;
    say so plainly instead of letting a shape error surface from inside the model."""
    if config.use_rotary_positional_embeddings or text.shape[1] == config.max_text_seq_length:
        return
    raise ValueError(
        f"the renderer has no rotary embeddings and takes exactly {config.max_text_seq_length} text tokens, "
        f"but this call encodes the prompt to {text.shape[1]}; call the pipeline with "
        f"max_sequence_length={config.max_text_seq_length}"
    )


def _takes_image_latent(model: torch.nn.Module) -> bool:
    """An image-to-video CogVideoX transformer: its input is the noisy latent and the image latent side by side."""
    return model.config.in_channels == 2 * model.config.out_channels


def _sample_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


def _with_sample(output: Any, sample: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(**{**output, "sample": sample})


def _report_clamp(session: Session, state: RunState, match: Match) -> None:
    """Say once per call, in the trace, when a host SNR lies beyond the renderer's noise table."""
    if state.clamp_reported or not bool(match.clamped.any()):
        return
    state.clamp_reported = True
    run = session.active_run
    tau = sorted({round(float(x), 3) for x in match.tau[match.clamped]})
    run.trace.events.append(
        f"cogvideox alignment: at step {run.step_index} the host's SNR lies beyond the renderer's noise table; "
        f"the renderer timestep was clamped to {tau} (input and output stay exactly scaled)"
    )


# -- the plugin ------------------------------------------------------------------------------
ADAPTER = CogVideoXAdapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
# not the declared `srd_check_setup`: CogVideoX is the family whose sizes need the alignment fields


@hookimpl
def srd_check_setup(session: Session) -> list[str] | None:
    """Resolve the renderer's parametrization before anything is installed; report what is wrong."""
    if session.adapter is not ADAPTER:
        return None
    facts, problems = resolve_renderer_parametrization(session)
    aligned = facts.alphas_cumprod is not None or facts.scaling_factor is not None
    if aligned and session.config.align != "none" and _takes_image_latent(session.sketcher):
        problems.append(
            "latent alignment is not implemented for image-to-video: the model input carries the clean image latent "
            "beside the noisy one, and only the noisy half may be rescaled. Use a renderer that shares the host's VAE "
            "scaling and noise schedule and drop renderer_scaling_factor / renderer_scheduler_config (or set "
            "align='none')"
        )
    if aligned:
        problem = _v_prediction_problem(session.pipe.scheduler, "the host scheduler")
        if problem and session.config.align != "none":
            problems.append(f"{problem} (needed to align the renderer)")
    session.plugin_state[PLUGIN_KEY] = SessionState(renderer=facts)
    return problems


@hookimpl
def srd_run_start(session: Session, run: Run) -> None:
    """Build this call's alignment from the scheduler the call actually uses."""
    if session.adapter is not ADAPTER:
        return
    alignment = _run_alignment(session, session.scheduler)
    run.plugin_state[PLUGIN_KEY] = RunState(alignment=alignment)
    if alignment is not None:
        run.trace.events.append(
            f"cogvideox alignment: renderer latent = {alignment.k:.6g} x host latent, renderer timestep of matched "
            f"SNR; {alignment.renderer.source}"
        )
