"""TeaCache (Timestep Embedding Aware Cache, ali-vilab/TeaCache, CVPR'25) as per-instance diffusers hooks.

Per model call, TeaCache compares the timestep-modulated input with the one of the
previous call in the same cache context:

    rel = mean|m_t - m_prev| / mean|m_prev|,   acc += poly(rel)

and skips the whole block stack while `acc < threshold`, adding the residual
(output - input of the block stack) cached at the last computed call; a computed call
resets `acc`. `poly` is a model-specific polynomial fitted by the TeaCache authors that maps
the change of the modulated input to the change of the output.

What "modulated input" means follows the official scripts exactly:
  * Wan2.1 (TeaCache4Wan2.1): the time embedding `e` (diffusers: `temb`, the first output of
    `condition_embedder`) with the default coefficients; with `use_ret_steps=True` the
    projected embedding `e0` (diffusers: `timestep_proj`) with the "retention steps"
    coefficients, and the first 5 steps always computed.
  * CogVideoX (TeaCache4CogVideoX1.5): the timestep embedding `emb` (the output of
    `time_embedding`).
  * LTX-Video (TeaCache4LTX-Video): the first block's modulated input, norm1(x) * (1 +
    scale_msa) + shift_msa with its own scale_shift_table and the call's temb, computed from
    the first block's arguments exactly as the block computes it.
Not served: Cosmos Predict2 and Kandinsky 5. Their pipelines call the model for the cond and
uncond branches without cache contexts, so one TeaCache state would compare (and reuse the
residual of) the other branch's call.
The first call of each context is always computed, and so is the last step when the number
of steps is known (the official non-retention modes do the same).

Why hooks and not the official class patch: the official scripts assign to the model
class, so a sketcher and a renderer of the same class (Wan 14B and 1.3B) would share one
cache. Here every hook lives on one instance, state is kept per `cache_context` (Wan calls
cond and uncond under separate contexts, CogVideoX one batched "cond_uncond" call), and
`remove_teacache` restores the instance exactly.

Layout (diffusers' FirstBlockCache is the model): a stateful hook on the modulation module
makes the decision; hooks on the transformer blocks then either run (the first records
the stack's input, the last the residual) or, on a skipped call, the first returns
input + cached residual and the others pass their input through.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

from ..accelerator_configs import TeaCacheConfig  # defined in the core (config.py needs it), re-exported here
from ..hookspecs import hookimpl
from ..switching import RENDER, SKETCH
from . import _registry

MODULATION_HOOK = "srd_teacache_modulation"
BLOCK_HOOK = "srd_teacache_block"
DEFAULT_CONTEXT = "default"

WAN = "wan"
COGVIDEOX = "cogvideox"
LTX = "ltx"


@dataclass(frozen=True)
class KnownModel:
    """A model whose TeaCache coefficients the TeaCache authors published (see FACTS.md)."""

    name: str
    family: str
    coefficients: tuple[float, ...]
    threshold: float | None  # None: the authors recommend none; the user sets it
    ret_coefficients: tuple[float, ...] | None = None
    ret_threshold: float | None = None


KNOWN_MODELS: dict[str, KnownModel] = {
    model.name: model
    for model in (
        KnownModel(
            "Wan2.1-T2V-14B",
            WAN,
            (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
            0.2,
            (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
            0.2,
        ),
        KnownModel(
            "Wan2.1-T2V-1.3B",
            WAN,
            (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
            0.08,
            (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
            0.1,
        ),
        KnownModel(
            "CogVideoX-5B",
            COGVIDEOX,
            (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
            0.1,
        ),
        KnownModel(
            "CogVideoX-2B",
            COGVIDEOX,
            (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03),
            0.1,
        ),
        # TeaCache4LTX-Video (ali-vilab/TeaCache), fitted on LTX-Video 0.9.1, whose 2B transformer config
        # every later 2B shares; no recommended threshold is carried over here
        KnownModel(
            "LTX-Video-2B",
            LTX,
            (2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03),
            None,
        ),
    )
}

IDENTITY = (1.0, 0.0)


def model_family(transformer: torch.nn.Module) -> str | None:
    """ "wan", "cogvideox", "ltx", or None for a transformer TeaCache does not know how to hook."""
    import diffusers

    for family, name in (
        (WAN, "WanTransformer3DModel"),
        (COGVIDEOX, "CogVideoXTransformer3DModel"),
        (LTX, "LTXVideoTransformer3DModel"),
    ):
        cls = getattr(diffusers, name, None)
        if isinstance(cls, type) and isinstance(transformer, cls):
            return family
    return None


def recognise(transformer: torch.nn.Module) -> KnownModel | None:
    """The published model this transformer's config describes, or None.

    Wan2.1 T2V: 40 layers x 5120 wide (14B) or 30 x 1536 (1.3B), 16 input channels, no image
    branch (the I2V models have other coefficients). CogVideoX 1.0: 42 layers / 48 heads (5B,
    also its I2V variant, which the official script treats alike) or 30 / 30 (2B), no temporal
    patch (CogVideoX1.5 has one, and other coefficients).
    """
    family = model_family(transformer)
    config = transformer.config
    if family == WAN:
        width = config.num_attention_heads * config.attention_head_dim
        if config.in_channels != 16 or config.image_dim is not None or config.added_kv_proj_dim is not None:
            return None
        return {
            (40, 5120): KNOWN_MODELS["Wan2.1-T2V-14B"],
            (30, 1536): KNOWN_MODELS["Wan2.1-T2V-1.3B"],
        }.get((config.num_layers, width))
    if family == COGVIDEOX:
        if config.patch_size_t is not None or config.ofs_embed_dim:
            return None
        return {
            (42, 48): KNOWN_MODELS["CogVideoX-5B"],
            (30, 30): KNOWN_MODELS["CogVideoX-2B"],
        }.get((config.num_layers, config.num_attention_heads))
    if family == LTX:
        width = config.num_attention_heads * config.attention_head_dim
        if (config.num_layers, width, config.in_channels) == (28, 2048, 128):
            return KNOWN_MODELS["LTX-Video-2B"]
    return None


@dataclass(frozen=True)
class TeaCacheSettings:
    """What `apply_teacache` resolved for one model (also returned to the caller)."""

    family: str
    model: str | None
    threshold: float
    coefficients: tuple[float, ...]
    modulation: str  # "temb" or "timestep_proj" (Wan), "emb" (CogVideoX), "first_block" (LTX)
    retained_steps: int
    compute_last_step: bool
    warning: str | None = None


def resolve_teacache(transformer: torch.nn.Module, config: TeaCacheConfig | None = None) -> TeaCacheSettings:
    """Resolve `config` against the model's architecture; raises ValueError naming what is missing."""
    config = config or TeaCacheConfig()
    if not isinstance(config, TeaCacheConfig):
        raise TypeError(f"config must be a TeaCacheConfig, got {type(config).__name__}")
    family = model_family(transformer)
    if family is None:
        raise ValueError(
            "TeaCache supports WanTransformer3DModel, CogVideoXTransformer3DModel and LTXVideoTransformer3DModel "
            f"(hosts that keep the cond and uncond calls apart), not {type(transformer).__name__}"
        )
    if config.use_ret_steps and family != WAN:
        raise ValueError("TeaCacheConfig.use_ret_steps is a Wan2.1 variant; CogVideoX has no retention-steps mode")
    known = recognise(transformer)
    warning = None
    if config.coefficients is not None:
        coefficients = config.coefficients
    elif known is not None:
        coefficients = known.ret_coefficients if config.use_ret_steps else known.coefficients
    else:
        coefficients = IDENTITY
        warning = (
            f"TeaCache: this {type(transformer).__name__} ({_describe(transformer)}) is none of "
            f"{', '.join(KNOWN_MODELS)}; using the identity polynomial, which has not been fitted to it. "
            "Pass TeaCacheConfig(coefficients=...) fitted for this model to silence this warning"
        )
    recommended = None if known is None else (known.ret_threshold if config.use_ret_steps else known.threshold)
    if config.threshold is not None:
        threshold = float(config.threshold)
    elif recommended is not None:
        threshold = recommended
    elif known is not None:
        raise ValueError(
            f"TeaCacheConfig.threshold=None means the TeaCache authors' recommended threshold, and they give none "
            f"for {known.name}; set TeaCacheConfig(threshold=...) explicitly (srd generate: --teacache THRESHOLD)"
        )
    else:
        raise ValueError(
            f"TeaCacheConfig.threshold=None means the recommended threshold of a recognised model, and this "
            f"{type(transformer).__name__} ({_describe(transformer)}) is none of {', '.join(KNOWN_MODELS)}; "
            "set TeaCacheConfig(threshold=...) explicitly (srd generate: --teacache THRESHOLD)"
        )
    if family == WAN:
        modulation = "timestep_proj" if config.use_ret_steps else "temb"
    else:
        modulation = "first_block" if family == LTX else "emb"
    return TeaCacheSettings(
        family=family,
        model=known.name if known else None,
        threshold=threshold,
        coefficients=coefficients,
        modulation=modulation,
        retained_steps=5 if config.use_ret_steps else 1,
        compute_last_step=not config.use_ret_steps,
        warning=warning,
    )


def _describe(transformer: torch.nn.Module) -> str:
    config = transformer.config
    return f"{config.num_layers} layers, {config.num_attention_heads} heads x {config.attention_head_dim}"


def rescale(coefficients: Sequence[float], value: float) -> float:
    """Evaluate the polynomial (highest degree first), like numpy.poly1d."""
    result = 0.0
    for coefficient in coefficients:
        result = result * value + coefficient
    return result


# -- counting ------------------------------------------------------------------------------
@dataclass
class TeaCacheStats:
    """Decisions since the last `reset_teacache`: one entry per model call.

    Kept apart from the cache state on purpose: diffusers pipelines reset stateful hooks at
    the end of every call (`maybe_free_model_hooks`), and the counts must survive that.
    """

    num_blocks: int
    decisions: list[tuple[str, int | None, bool]] = field(default_factory=list)  # (context, step, computed)

    @property
    def computed_calls(self) -> int:
        return sum(1 for *_, computed in self.decisions if computed)

    @property
    def skipped_calls(self) -> int:
        return len(self.decisions) - self.computed_calls

    @property
    def computed_blocks(self) -> int:
        return self.computed_calls * self.num_blocks

    @property
    def skipped_blocks(self) -> int:
        return self.skipped_calls * self.num_blocks


# -- the hooks -----------------------------------------------------------------------------
class _TeaCacheState(BaseState):
    """Cache of one context (cond, uncond, cond_uncond) of one model."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.previous_modulated: torch.Tensor | None = None
        self.accumulated = 0.0
        self.calls = 0
        self.should_compute = True
        self.stack_input: torch.Tensor | None = None
        self.stack_encoder_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.encoder_residual: torch.Tensor | None = None


def _state(manager: StateManager) -> _TeaCacheState:
    """The state of the current cache context (a model called outside any context gets "default")."""
    if manager._context is None:
        manager.set_context(CacheContext(DEFAULT_CONTEXT))
    return manager.get_state()


class _Current:
    """The state the modulation hook picked for the ongoing call, read by the block hooks.

    The blocks read it here rather than from the StateManager so that the cache-context
    name stays out of what torch.compile traces inside the blocks (no recompilation for
    each of cond / uncond). None until the modulation hook has run.
    """

    def __init__(self) -> None:
        self.state: _TeaCacheState | None = None


class TeaCacheModulationHook(ModelHook):
    """Sees the modulated input of every call and decides whether the blocks run."""

    _is_stateful = True

    def __init__(self, settings: TeaCacheSettings, state_manager: StateManager, current: _Current, num_blocks: int):
        super().__init__()
        self.settings = settings
        self.state_manager = state_manager
        self.current = current
        self.stats = TeaCacheStats(num_blocks=num_blocks)
        self.created_root_registry = False

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if self.settings.modulation == "first_block":  # LTX: the first block decides (see TeaCacheBlockHook)
            return output
        if self.settings.modulation == "temb":
            modulated = output[0]
        elif self.settings.modulation == "timestep_proj":
            modulated = output[1]
        else:
            modulated = output
        self._decide(modulated)
        return output

    @torch.compiler.disable
    def _decide(self, modulated: torch.Tensor) -> None:
        """TeaCache's rule; a data-dependent decision, so it runs outside any compiled graph."""
        settings = self.settings
        state = _state(self.state_manager)
        context = self.state_manager._context
        step = context.step_index if context.step_index is not None else state.calls
        last = settings.compute_last_step and context.num_inference_steps is not None
        last = last and step >= context.num_inference_steps - 1
        modulated = modulated.detach().float()
        compute = True
        previous = state.previous_modulated
        if previous is not None and state.residual is not None and step >= settings.retained_steps and not last:
            scale = previous.abs().mean().item()
            if scale > 0:
                distance = (modulated - previous).abs().mean().item() / scale
                state.accumulated += rescale(settings.coefficients, distance)
                compute = not (settings.threshold > 0 and state.accumulated < settings.threshold)
        if compute:
            state.accumulated = 0.0
        state.previous_modulated = modulated.clone()
        state.should_compute = compute
        state.calls += 1
        self.current.state = state
        self.stats.decisions.append((context.name, context.step_index, compute))

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.current.state = None
        return module


class TeaCacheBlockHook(ModelHook):
    """One transformer block: runs, or on a skipped call stands in for the whole stack."""

    def __init__(
        self,
        current: _Current,
        family: str,
        is_first: bool,
        is_last: bool,
        decide: TeaCacheModulationHook | None = None,
    ) -> None:
        super().__init__()
        self.current = current
        self.with_encoder = family == COGVIDEOX  # CogVideoX blocks return (hidden, encoder_hidden)
        self.is_first = is_first
        self.is_last = is_last
        #: LTX: the modulation hook whose rule this (first) block applies to its own modulated input
        self.decide = decide

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.decide is not None:
            self.decide._decide(ltx_modulated_input(module, args, kwargs))
        state = self.current.state
        if state is None:  # called outside a hooked model call: nothing to decide with
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        encoder = None
        if self.with_encoder:
            encoder = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        if not state.should_compute:
            if self.is_first:
                hidden = hidden + state.residual
                if self.with_encoder:
                    encoder = encoder + state.encoder_residual
            return (hidden, encoder) if self.with_encoder else hidden
        if self.is_first:
            state.stack_input, state.stack_encoder_input = hidden, encoder
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_last:
            out_hidden = output[0] if self.with_encoder else output
            state.residual = out_hidden - state.stack_input
            if self.with_encoder:
                state.encoder_residual = output[1] - state.stack_encoder_input
            state.stack_input = state.stack_encoder_input = None
        return output


def ltx_modulated_input(block: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """What an LTXVideoTransformerBlock feeds its self-attention: norm1(x) * (1 + scale_msa) + shift_msa,
    written as diffusers 0.42's block computes it (TeaCache4LTX-Video's modulated input)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    temb = args[2] if len(args) > 2 else kwargs["temb"]
    table = block.scale_shift_table
    ada = table[None, None].to(temb.device) + temb.reshape(hidden.size(0), temb.size(1), table.shape[0], -1)
    shift_msa, scale_msa = ada[:, :, 0], ada[:, :, 1]
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


# -- public API ------------------------------------------------------------------------
def _parts(transformer: torch.nn.Module, family: str) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    if family == WAN:
        return transformer.condition_embedder, transformer.blocks
    if family == LTX:
        return transformer.time_embed, transformer.transformer_blocks
    return transformer.time_embedding, transformer.transformer_blocks


def _modulation_hook(transformer: torch.nn.Module) -> TeaCacheModulationHook | None:
    family = model_family(transformer)
    if family is None:
        return None
    registry = getattr(_parts(transformer, family)[0], "_diffusers_hook", None)
    return registry.get_hook(MODULATION_HOOK) if registry is not None else None


def has_teacache(transformer: torch.nn.Module) -> bool:
    return _modulation_hook(transformer) is not None


def existing_cache(transformer: torch.nn.Module) -> str | None:
    """Describe a cache already on this model (TeaCache, a diffusers cache, cache-dit), or None."""
    if has_teacache(transformer):
        return "TeaCache (remove it with srd_plugin.hooks.teacache.remove_teacache(transformer))"
    cache_config = getattr(transformer, "_cache_config", None)
    if cache_config is not None:
        return f"diffusers' {type(cache_config).__name__} (remove it with transformer.disable_cache())"
    if getattr(transformer, "_is_cached", False):
        return "cache-dit (remove it with cache_dit.disable_cache(pipe))"
    return None


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig | None = None) -> TeaCacheSettings:
    """Put TeaCache on this transformer instance; returns the resolved settings.

    Raises ValueError (before touching the model) for an unsupported model, a missing
    threshold, or a model that already carries a cache: one skipping cache per model, since
    two of them would each skip on the other's stale residuals. Warns once when the
    architecture is unknown and no coefficients were given.
    """
    settings = resolve_teacache(transformer, config)
    problem = existing_cache(transformer)
    if problem is not None:
        raise ValueError(f"this {type(transformer).__name__} already has a cache: {problem}; apply one cache per model")
    if settings.warning:
        warnings.warn(settings.warning, stacklevel=2)
    modulation_module, blocks = _parts(transformer, settings.family)
    if len(blocks) == 0:
        raise ValueError(f"this {type(transformer).__name__} has no transformer blocks to cache")
    state_manager, current = StateManager(_TeaCacheState), _Current()
    modulation_hook = TeaCacheModulationHook(settings, state_manager, current, num_blocks=len(blocks))
    modulation_hook.created_root_registry = _registry.ensure_root_registry(transformer)
    _registry.register(modulation_module, modulation_hook, MODULATION_HOOK)
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        decide = modulation_hook if index == 0 and settings.modulation == "first_block" else None
        hook = TeaCacheBlockHook(current, settings.family, is_first=index == 0, is_last=index == last, decide=decide)
        _registry.register(block, hook, BLOCK_HOOK)
    _registry.ensure_root_registry(transformer)  # the block registries are new: refresh the context cache
    return settings


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Take TeaCache off this transformer; its outputs are then exactly those of a never-cached model."""
    hook = _modulation_hook(transformer)
    if hook is None:
        return
    modulation_module, blocks = _parts(transformer, hook.settings.family)
    for block in blocks:
        _registry.unregister(block, BLOCK_HOOK)
    _registry.unregister(modulation_module, MODULATION_HOOK)
    _registry.drop_root_registry_if_empty(transformer, hook.created_root_registry)


def teacache_stats(transformer: torch.nn.Module) -> TeaCacheStats | None:
    """A copy of the decisions since the last reset (None without TeaCache)."""
    hook = _modulation_hook(transformer)
    if hook is None:
        return None
    return TeaCacheStats(num_blocks=hook.stats.num_blocks, decisions=list(hook.stats.decisions))


def reset_teacache(transformer: torch.nn.Module, stats: bool = True) -> None:
    """Forget the cache (every context computes its next call); with `stats`, clear the counts too."""
    hook = _modulation_hook(transformer)
    if hook is None:
        return
    hook.reset_state(transformer)
    if stats:
        hook.stats.decisions.clear()


# -- the SRD plugin: TeaCache on both roles, from SRDConfig.teacache -------------------------
PLUGIN_STATE_KEY = "teacache"


def _role_config(session: Any, role: str) -> TeaCacheConfig | None:
    """`teacache` for the sketcher; for the renderer `teacache_renderer` (False: none), else `teacache` too."""
    config = session.config
    if role == RENDER and config.teacache_renderer is not None:
        return config.teacache_renderer or None
    return config.teacache


def _roles(session: Any) -> list[tuple[str, torch.nn.Module]]:
    """(role, model) for each distinct model: a renderer that is the sketcher shares its TeaCache."""
    roles = [(SKETCH, session.sketcher)]
    if session.renderer is not session.sketcher:
        roles.append((RENDER, session.renderer))
    return roles


def _applied_by_current_session(session: Any, model: torch.nn.Module) -> bool:
    """True if the SRD setup that `enable` is about to replace put TeaCache on `model`."""
    from ..runtime import session_of

    current = session_of(session.pipe)
    return current is not None and any(m is model for m in current.plugin_state.get(PLUGIN_STATE_KEY, {}).values())


@hookimpl
def srd_check_setup(session: Any) -> list[str]:
    problems = []
    for role, model in _roles(session):
        if _role_config(session, role) is None:
            continue
        name = "sketcher" if role == SKETCH else "renderer"
        try:
            resolve_teacache(model, _role_config(session, role))
        except ValueError as error:
            problems.append(f"teacache on the {name}: {error}")
            continue
        existing = existing_cache(model)
        if existing is not None and not _applied_by_current_session(session, model):
            problems.append(
                f"teacache on the {name}: it already has a cache, {existing}; drop SRDConfig.teacache to keep "
                "yours (SRD resets it every call), or remove yours to let SRD apply TeaCache"
            )
    return problems


@hookimpl
def srd_prepare_model(session: Any, role: str, model: torch.nn.Module) -> None:
    config = _role_config(session, role)
    if config is None or (role == RENDER and model is session.sketcher):
        return
    apply_teacache(model, config)
    session.plugin_state.setdefault(PLUGIN_STATE_KEY, {})[role] = model


@hookimpl
def srd_restore_model(session: Any, role: str, model: torch.nn.Module) -> None:
    applied = session.plugin_state.get(PLUGIN_STATE_KEY, {})
    if applied.pop(role, None) is not None:
        remove_teacache(model)


@hookimpl
def srd_run_start(session: Any, run: Any) -> None:
    """Every call starts with empty caches and zero counts on both roles."""
    for model in session.plugin_state.get(PLUGIN_STATE_KEY, {}).values():
        reset_teacache(model)


@hookimpl
def srd_switch(session: Any, run: Any, step_index: int) -> None:
    """The renderer's first step is always computed: nothing of an earlier phase is reused."""
    reset_teacache(session.renderer, stats=False)


@hookimpl
def srd_run_end(session: Any, run: Any) -> None:
    """Say in the trace what TeaCache did this call, per role, so a saved trace shows it was active."""
    applied = session.plugin_state.get(PLUGIN_STATE_KEY, {})
    parts = []
    for role, model in applied.items():
        hook, stats = _modulation_hook(model), teacache_stats(model)
        if hook is None or stats is None:
            continue
        name = "sketcher" if role == SKETCH else "renderer"
        parts.append(
            f"{name} (threshold {hook.settings.threshold:g}) computed {stats.computed_calls} of "
            f"{len(stats.decisions)} calls, {stats.skipped_blocks} blocks skipped"
        )
    if parts:
        run.trace.events.append("teacache: " + "; ".join(parts))


def srd_teacache_stats(pipe: Any) -> dict[str, TeaCacheStats]:
    """Per role ("sketch", "render"), the TeaCache decisions of the pipeline's latest SRD call."""
    from ..runtime import session_of

    session = session_of(pipe)
    if session is None:
        return {}
    return {
        role: stats
        for role, model in (("sketch", session.sketcher), ("render", session.renderer))
        if (stats := teacache_stats(model)) is not None
    }
