"""SageAttention for Wan and CogVideoX through per-instance attention processors, with an SDPA fallback.

Why own processors rather than diffusers' attention backends:
  * CogVideoX's processor calls `F.scaled_dot_product_attention` directly, so diffusers'
    `set_attention_backend` never reaches it;
  * diffusers' "sage" backend requires sageattention >= 2.1.1, which is not on PyPI (PyPI
    has 1.0.6: Triton, CUDA only, head dims 64 / 96 / 128);
  * the route must be decided per call (device, head dim, dtype, mask), falling back to
    the model's own attention path when SageAttention cannot serve it.

Each processor is a subclass of the model's own processor class whose `__call__` repeats
the original's computation (diffusers 0.42) and differs only in the attention call: the
fallback is literally the original call (Wan: diffusers' dispatcher with the processor's
backend and parallel config; CogVideoX: SDPA), which the tests check bit for bit. They are
set per attention module (`attn.set_processor`); `remove_sage_attention` puts the original
processor objects back. No class is modified.

sageattention 1.0.6 smooths the key by subtracting its mean IN PLACE (`k -= km`). The kernel
wrapper here smooths out of place and calls it with `smooth_k=False`: the same arithmetic
(softmax is invariant to shifting every key by one vector), and the caller's key is untouched.

The kernel runs as the custom op `srd_plugin::fused_attention`, so `torch.compile` keeps it
in the graph without tracing Triton code. A stand-in kernel can be injected for CPU tests
(`apply_sage_attention(transformer, kernel=AttentionKernel(...))`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from ..hookspecs import hookimpl
from ..switching import RENDER, SKETCH

SAGE_HEAD_DIMS = (64, 96, 128)


@dataclass(frozen=True)
class AttentionKernel:
    """A fused attention kernel and where it can run.

    `fn(query, key, value)` takes [batch, heads, tokens, head_dim] tensors ("HND"), computes
    non-causal attention without a mask at the default scale 1/sqrt(head_dim), and returns a
    new tensor of the query's shape and dtype. It must not modify its inputs.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    head_dims: tuple[int, ...] = SAGE_HEAD_DIMS
    device_types: tuple[str, ...] = ("cuda",)
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def make_sage_kernel(
    sageattn: Callable[..., torch.Tensor], device_types: tuple[str, ...] = ("cuda",)
) -> AttentionKernel:
    """Wrap a `sageattention.sageattn` function (1.0.6 or 2.x) as an `AttentionKernel`."""

    def sage(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        smoothed_key = key - key.mean(dim=2, keepdim=True)  # out of place: 1.0.6 would do `key -= mean`
        return sageattn(query, smoothed_key, value, tensor_layout="HND", is_causal=False, smooth_k=False)

    return AttentionKernel(name="sageattention", fn=sage, device_types=device_types)


def sageattention_kernel() -> AttentionKernel | None:
    """SageAttention from the installed `sageattention` package, or None if it cannot be imported.

    The default kernel of `apply_sage_attention` (and of SRDConfig.sage_attention); tests
    replace this function to inject a stand-in.
    """
    try:
        from sageattention import sageattn
    except Exception:  # ImportError, or Triton failing to load on a machine without a GPU
        return None
    return make_sage_kernel(sageattn)


# -- the kernel as a custom op (opaque to torch.compile) ---------------------------------
_KERNEL_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {}


@torch.library.custom_op("srd_plugin::fused_attention", mutates_args=())
def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str) -> torch.Tensor:
    """Run the registered kernel `kernel` on HND tensors; the output is contiguous, like the fake below."""
    return _KERNEL_FUNCTIONS[kernel](query, key, value).contiguous()


@fused_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str) -> torch.Tensor:
    return query.new_empty(query.shape)


def _kernel_id(kernel: AttentionKernel) -> str:
    return f"{kernel.name}-{id(kernel.fn):x}"


# -- routing ----------------------------------------------------------------------------
NOT_INSTALLED = "sageattention is not installed (pip install sageattention; it needs a CUDA GPU and Triton)"


@dataclass
class SageRoute:
    """The routing of one transformer: its kernel, the counts per route, the reasons already warned about."""

    kernel: AttentionKernel | None
    model_name: str
    counts: Counter = field(default_factory=Counter)
    warned: set[str] = field(default_factory=set)

    def refusal(self, query: torch.Tensor, attention_mask: torch.Tensor | None, distributed: bool) -> str | None:
        """Why the kernel cannot serve this call (None: it can). `query` is HND."""
        kernel = self.kernel
        if kernel is None:
            return NOT_INSTALLED
        if query.device.type not in kernel.device_types:
            return f"the tensors are on {query.device.type}, {kernel.name} runs on {'/'.join(kernel.device_types)}"
        if query.shape[-1] not in kernel.head_dims:
            return f"head dim {query.shape[-1]} is not one of {kernel.name}'s {kernel.head_dims}"
        if query.dtype not in kernel.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in kernel.dtypes)
            return f"{str(query.dtype).removeprefix('torch.')} inputs; {kernel.name} takes {names}"
        if attention_mask is not None:
            return f"an attention mask was given, which {kernel.name} does not take"
        if distributed:
            return "context parallelism is on; diffusers' dispatcher distributes this attention"
        return None

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        fallback: Callable[[], torch.Tensor],
        distributed: bool = False,
    ) -> torch.Tensor:
        """Attention of HND tensors through the kernel, or `fallback()` (the model's own path)."""
        reason = self.refusal(query, attention_mask, distributed)
        if reason is None:
            self.counts["sage"] += 1
            return fused_attention(query, key, value, _kernel_id(self.kernel))
        self.counts["fallback"] += 1
        if reason not in self.warned:
            self.warned.add(reason)
            warnings.warn(
                f"SageAttention is not used in {self.model_name}: {reason}; using its SDPA path", stacklevel=2
            )
        return fallback()


# -- the processors -----------------------------------------------------------------------
class SageWanAttnProcessor(WanAttnProcessor):
    """WanAttnProcessor (text-to-video branch) with the attention call routed through `SageRoute`."""

    def __init__(self, route: SageRoute, original: WanAttnProcessor) -> None:
        super().__init__()
        self.route = route
        self.original = original
        # the instance settings diffusers may have put on the original (set_attention_backend, parallelism)
        self._attention_backend = original._attention_backend
        self._parallel_config = original._parallel_config

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        parallel_config = self._parallel_config if encoder_hidden_states is None else None

        def original_attention() -> torch.Tensor:
            return dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=parallel_config,
            ).transpose(1, 2)

        hidden_states = self.route.attend(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attention_mask,
            original_attention,
            distributed=parallel_config is not None,
        ).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding, as written inside WanAttnProcessor.__call__."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class SageCogVideoXAttnProcessor(CogVideoXAttnProcessor2_0):
    """CogVideoXAttnProcessor2_0 with the attention call routed through `SageRoute`."""

    def __init__(self, route: SageRoute, original: CogVideoXAttnProcessor2_0) -> None:
        super().__init__()
        self.route = route
        self.original = original

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        def original_attention() -> torch.Tensor:
            return F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )

        hidden_states = self.route.attend(query, key, value, attention_mask, original_attention)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


_SAGE_PROCESSORS = (SageWanAttnProcessor, SageCogVideoXAttnProcessor)


def _replaceable(module: torch.nn.Module) -> type | None:
    """The Sage processor class for this attention module, or None if its processor is not one we reproduce.

    Exact types only: a subclass or another processor (fused projections, LoRA, custom) may
    compute something else, and Wan's image-conditioned attention (I2V) is left alone.
    """
    processor = getattr(module, "processor", None)
    if type(processor) is WanAttnProcessor and getattr(module, "add_k_proj", None) is None:
        return SageWanAttnProcessor
    if type(processor) is CogVideoXAttnProcessor2_0:
        return SageCogVideoXAttnProcessor
    return None


# -- public API ------------------------------------------------------------------------
_DEFAULT = object()


def has_sage_attention(transformer: torch.nn.Module) -> bool:
    return any(isinstance(getattr(m, "processor", None), _SAGE_PROCESSORS) for m in transformer.modules())


def apply_sage_attention(transformer: torch.nn.Module, kernel: AttentionKernel | None | object = _DEFAULT) -> SageRoute:
    """Route this transformer's attention to SageAttention where it can run; returns the route (counts).

    `kernel`: default the installed sageattention (`sageattention_kernel()`), None for no kernel
    (every call falls back), or an `AttentionKernel` (e.g. a CPU stand-in for tests).
    Raises ValueError (before any change) if no attention processor of this model can be
    served or SageAttention is already applied. Calls the kernel cannot serve (CPU tensors,
    head dim, dtype, mask) take the model's own path, with one warning per reason.
    """
    if has_sage_attention(transformer):
        raise ValueError(
            f"SageAttention is already applied to this {type(transformer).__name__}; "
            "call remove_sage_attention(transformer) first"
        )
    targets = [(m, cls) for m in transformer.modules() if (cls := _replaceable(m)) is not None]
    if not targets:
        raise ValueError(
            f"no attention processor of this {type(transformer).__name__} can be routed to SageAttention: it "
            "supports WanAttnProcessor (text-to-video attention) and CogVideoXAttnProcessor2_0 (not fused)"
        )
    if kernel is _DEFAULT:
        kernel = sageattention_kernel()
    if kernel is not None and not isinstance(kernel, AttentionKernel):
        raise TypeError(f"kernel must be an AttentionKernel or None, got {type(kernel).__name__}")
    if kernel is not None:
        _KERNEL_FUNCTIONS[_kernel_id(kernel)] = kernel.fn
    route = SageRoute(kernel=kernel, model_name=type(transformer).__name__)
    for module, cls in targets:
        module.set_processor(cls(route, module.processor))
    return route


def remove_sage_attention(transformer: torch.nn.Module) -> None:
    """Put the original processor objects back; the model then computes exactly what it did before."""
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, _SAGE_PROCESSORS):
            module.set_processor(processor.original)


def sage_route(transformer: torch.nn.Module) -> SageRoute | None:
    """The route `apply_sage_attention` put on this transformer (None without SageAttention)."""
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, _SAGE_PROCESSORS):
            return processor.route
    return None


def sage_attention_stats(transformer: torch.nn.Module) -> Counter:
    """How many attention calls took each route ("sage", "fallback") since `apply_sage_attention`."""
    route = sage_route(transformer)
    return Counter(route.counts) if route is not None else Counter()


# -- the SRD plugin: SageAttention on both roles, from SRDConfig.sage_attention ----------------
PLUGIN_STATE_KEY = "sage_attention"


def _applied_by_current_session(session: Any, model: torch.nn.Module) -> bool:
    """True if the SRD setup that `enable` is about to replace put SageAttention on `model`."""
    from ..runtime import session_of

    current = session_of(session.pipe)
    return current is not None and any(m is model for m in current.plugin_state.get(PLUGIN_STATE_KEY, {}).values())


@hookimpl
def srd_check_setup(session: Any) -> list[str]:
    if not session.config.sage_attention:
        return []
    problems = []
    models = [("sketcher", session.sketcher)]
    if session.renderer is not session.sketcher:
        models.append(("renderer", session.renderer))
    for name, model in models:
        if _applied_by_current_session(session, model):
            continue  # removed by `enable` before it applies the new setup
        if has_sage_attention(model):
            problems.append(
                f"sage_attention: the {name} already has SageAttention; drop sage_attention=True to keep yours, or "
                "call remove_sage_attention on it first"
            )
        elif not any(_replaceable(m) for m in model.modules()):
            problems.append(
                f"sage_attention: no attention processor of the {name} ({type(model).__name__}) can be routed"
            )
    return problems


@hookimpl
def srd_prepare_model(session: Any, role: str, model: torch.nn.Module) -> None:
    if not session.config.sage_attention or (role == RENDER and model is session.sketcher):
        return
    apply_sage_attention(model)
    session.plugin_state.setdefault(PLUGIN_STATE_KEY, {})[role] = model


@hookimpl
def srd_restore_model(session: Any, role: str, model: torch.nn.Module) -> None:
    if session.plugin_state.get(PLUGIN_STATE_KEY, {}).pop(role, None) is not None:
        remove_sage_attention(model)


@hookimpl
def srd_run_start(session: Any, run: Any) -> None:
    """Note the counts so far: the routes count since they were applied, the trace reports one call."""
    applied = session.plugin_state.get(PLUGIN_STATE_KEY, {})
    run.plugin_state[PLUGIN_STATE_KEY] = {role: sage_attention_stats(model) for role, model in applied.items()}


@hookimpl
def srd_run_end(session: Any, run: Any) -> None:
    """Say in the trace how many attention calls of this call ran SageAttention, per role, and why not."""
    before = run.plugin_state.get(PLUGIN_STATE_KEY, {})
    parts = []
    for role, model in session.plugin_state.get(PLUGIN_STATE_KEY, {}).items():
        route = sage_route(model)
        if route is None or role not in before:
            continue
        counts = route.counts - before[role]
        name = "sketcher" if role == SKETCH else "renderer"
        kernel = route.kernel.name if route.kernel is not None else "sageattention"
        part = f"{name} {counts['sage']} of {counts['sage'] + counts['fallback']} attention calls on {kernel}"
        if counts["fallback"]:
            part += f" (SDPA otherwise: {' / '.join(sorted(route.warned))})"
        parts.append(part)
    if parts:
        run.trace.events.append("sage attention: " + "; ".join(parts))
