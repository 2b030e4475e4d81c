"""What a diffusers client relies on, checked with SRD on, for every pipeline in `compat_cases.CASES`.

Each behaviour runs in two renderer modes (see `compat_cases`): ``"same"`` (a separate renderer
module with the sketcher's weights: the output must equal the plain pipeline's) and ``"other"``
(a renderer with other weights: the output differs from the plain pipeline's and must equal the
swap oracle, the plain pipeline whose `callback_on_step_end` puts the renderer in
`pipe.transformer` after step k-1). The oracle always runs on fresh, never-enabled components.
docs/reliability.md ("What a diffusers client can rely on") maps each behaviour to its test.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import pickle
import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from compat_cases import BEHAVIOURS, CACHES, CASES, MODES, CompatCase
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    FasterCacheConfig,
    FirstBlockCacheConfig,
    FlowMatchEulerDiscreteScheduler,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import srd_plugin as srd
from srd_plugin import launcher
from srd_plugin.settings import load_settings

STEPS = 3
SWITCH = 1  # "switch at step 1": step 0 sketches, every later step renders

CASE_IDS = [case.name for case in CASES]
parametrize_cases = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
parametrize_modes = pytest.mark.parametrize("mode", MODES)


@pytest.fixture(autouse=True)
def clean_srd_environment(monkeypatch):
    """Settings read by `srd-run` come from the test alone."""
    for name in list(os.environ):
        if name.startswith("SRD_"):
            monkeypatch.delenv(name)


# -- references --------------------------------------------------------------------------------
def swap_oracle(
    pipe: Any, renderer: torch.nn.Module, k: int, kwargs: dict[str, Any], denoisers: tuple[str, ...] = ("transformer",)
) -> Any:
    """The plain pipeline, with `pipe.transformer` (and every other denoiser the host calls, Wan2.2's
    `transformer_2`) replaced by the renderer after step k-1 (1 <= k).

    A `callback_on_step_end` already in `kwargs` runs first, on every step, as the client wrote it.
    """
    user_callback = kwargs.pop("callback_on_step_end", None)

    def swap(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if user_callback is not None:
            tensors = user_callback(p, i, t, tensors)
        if i == k - 1:
            for name in denoisers:
                setattr(p, name, renderer)
        return tensors

    return pipe(**kwargs, callback_on_step_end=swap)


def oracle(
    case: CompatCase,
    mode: str,
    k: int = SWITCH,
    steps: int = STEPS,
    prepare: Callable[[Any, torch.nn.Module], None] | None = None,
    **overrides: Any,
) -> Any:
    """The swap oracle on fresh components; `prepare(pipe, renderer)` applies the client's setting to both."""
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    if prepare is not None:
        prepare(pipe, renderer)
    return swap_oracle(pipe, renderer, k, case.call_kwargs(steps, **overrides), case.denoisers)


def plain(case: CompatCase, steps: int = STEPS, prepare: Callable[[Any], None] | None = None, **overrides: Any) -> Any:
    """The plain pipeline on fresh components, never enabled."""
    pipe = case.build_pipe()
    if prepare is not None:
        prepare(pipe)
    return pipe(**case.call_kwargs(steps, **overrides))


_MEMO: dict[tuple, Any] = {}


def oracle_frames(case: CompatCase, mode: str, k: int = SWITCH, steps: int = STEPS) -> torch.Tensor:
    """`case.output(oracle(...))` with the default call, computed once per module (the tests never change it)."""
    key = ("oracle", case.name, mode, k, steps)
    if key not in _MEMO:
        _MEMO[key] = case.output(oracle(case, mode, k=k, steps=steps))
    return _MEMO[key]


def plain_frames(case: CompatCase, steps: int = STEPS) -> torch.Tensor:
    """`case.output(plain(case))` with the default call, computed once per module."""
    key = ("plain", case.name, steps)
    if key not in _MEMO:
        _MEMO[key] = case.output(plain(case, steps=steps))
    return _MEMO[key]


def enabled(case: CompatCase, mode: str, k: int = SWITCH) -> tuple[Any, torch.nn.Module]:
    """A fresh pipeline with SRD on, switching at step k, and its renderer."""
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    return pipe, renderer


# -- behaviours a case declares unsupported ---------------------------------------------------------
def _probe_save_pretrained(case: CompatCase, folder: Path | None) -> None:
    plain_pipe = case.build_pipe()
    plain_pipe.save_pretrained(folder)
    DiffusionPipeline.from_pretrained(folder)(**case.call_kwargs(STEPS))


def _probe_prompt_batch(case: CompatCase, folder: Path | None) -> None:
    plain(case, prompt=PROMPTS, generator=generators(0, 1))


def _probe_num_videos_per_prompt(case: CompatCase, folder: Path | None) -> None:
    plain(case, **{case.per_prompt_argument: 2})


def _probe_from_pipe(case: CompatCase, folder: Path | None) -> None:
    plain_pipe = case.build_pipe()
    type(plain_pipe).from_pipe(plain_pipe)


def _probe_pickle(case: CompatCase, folder: Path | None) -> None:
    pickle.dumps(case.build_pipe())


def _probe_encode_prompt(case: CompatCase, folder: Path | None) -> None:
    plain_pipe = case.build_pipe()
    encode_prompt_works_in_isolation(type(plain_pipe), plain_pipe.components, lambda: case.call_kwargs(STEPS))


def _probe_vae_tiling(case: CompatCase, folder: Path | None) -> None:
    plain(case, prepare=lambda pipe: case.enable_vae_tiling(pipe.vae), output_type="pt")


def _probe_fused_qkv(case: CompatCase, folder: Path | None) -> None:
    plain(case, prepare=lambda pipe: fuse_denoisers(case, pipe))


def _probe_cache(name: str) -> Callable[[CompatCase, Path | None], None]:
    def probe(case: CompatCase, folder: Path | None) -> None:
        plain_pipe = case.build_pipe()
        plain_pipe.transformer.enable_cache(cache_config(name, case, plain_pipe, first_step=0))
        cached = case.output(plain_pipe(**case.call_kwargs(CACHE_STEPS)))
        if torch.equal(cached, plain_frames(case, steps=CACHE_STEPS)):  # runs, but changes nothing
            raise RuntimeError(f"{name} skipped nothing on the plain pipeline")

    return probe


#: how the suite tries each declarable behaviour on the plain pipeline
PROBES: dict[str, Callable[[CompatCase, Path | None], None]] = {
    "save_pretrained": _probe_save_pretrained,
    "prompt_batch": _probe_prompt_batch,
    "num_videos_per_prompt": _probe_num_videos_per_prompt,
    "from_pipe": _probe_from_pipe,
    "pickle": _probe_pickle,
    "encode_prompt": _probe_encode_prompt,
    "vae_tiling": _probe_vae_tiling,
    "fused_qkv": _probe_fused_qkv,
    **{name: _probe_cache(name) for name in CACHES},
}
assert sorted(PROBES) == sorted(BEHAVIOURS), "every behaviour a case may declare unsupported needs a probe"


def skip_if_unsupported(case: CompatCase, behaviour: str, folder: Path | None = None) -> None:
    """Skip `behaviour` for `case` if the case declares it unsupported, after checking that the plain pipeline
    (never enabled) really fails at it with the declared error (`folder`: where a probe may write files)."""
    declared = case.unsupported.get(behaviour)
    if declared is None:
        return
    with pytest.raises(Exception, match=declared.error) as error:  # noqa: PT011 - the case names the message
        PROBES[behaviour](case, folder)
    pytest.skip(f"{case.name}: {behaviour} fails without SRD ({declared.reason}): {type(error.value).__name__}")


def fuse_denoisers(case: CompatCase, pipe: Any, renderer: torch.nn.Module | None = None) -> None:
    """The client fuses the QKV projections of every denoiser of the host (and of the renderer)."""
    for name in case.denoisers:
        getattr(pipe, name).fuse_qkv_projections()
    if renderer is not None:
        renderer.fuse_qkv_projections()


def assert_srd_output(mode: str, got: torch.Tensor, expected: torch.Tensor, plain_output: Any):
    """`got` is the oracle's output bit for bit; in "same" mode that is the plain output, in "other" it is not."""
    assert torch.equal(got, expected)
    if mode == "same":
        assert torch.equal(got, plain_output)
    else:
        assert not torch.equal(got, plain_output), "the renderer with other weights was not used"


# -- save / load under srd-run -----------------------------------------------------------------
ROUND_TRIP_PROGRAM = """
    import importlib
    import json
    import sys

    import torch
    from diffusers import DiffusionPipeline

    import srd_plugin as srd

    folder, copy_folder, out, factory, steps, overrides, attribute = sys.argv[1:]
    module, _, name = factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    call_kwargs = lambda: factory(num_inference_steps=int(steps), **json.loads(overrides))
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    first = getattr(pipe(**call_kwargs()), attribute)
    pipe.save_pretrained(copy_folder)
    again = DiffusionPipeline.from_pretrained(copy_folder)
    again.set_progress_bar_config(disable=True)
    second = getattr(again(**call_kwargs()), attribute)
    torch.save(
        {
            "outputs": [first, second],
            "enabled": [srd.is_enabled(pipe), srd.is_enabled(again)],
            "roles": [srd.last_trace(pipe).roles, srd.last_trace(again).roles],
        },
        out,
    )
"""


@parametrize_modes
@parametrize_cases
def test_save_pretrained_then_from_pretrained_under_srd_run(case, mode, tmp_path):
    """A program run by `srd-run` loads a pipeline saved while enabled, saves it again and reloads it."""
    skip_if_unsupported(case, "save_pretrained", tmp_path / "plain")
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    pipe.save_pretrained(tmp_path / "pipeline")
    same_as_sketcher = mode == "same" and case.same_weights_from == "transformer"
    if same_as_sketcher:
        renderer_path = tmp_path / "pipeline"  # a pipeline folder: its transformer, the sketcher's weights
    else:
        renderer.save_pretrained(tmp_path / "renderer")
        renderer_path = tmp_path / "renderer"
    config = tmp_path / "srd.toml"
    config.write_text(f'[srd]\nenable = true\nrenderer = "{renderer_path}"\nswitch = "step"\nswitch_step = {SWITCH}\n')
    program = tmp_path / "host.py"
    program.write_text(textwrap.dedent(ROUND_TRIP_PROGRAM))
    arguments = [tmp_path / "pipeline", tmp_path / "copy", tmp_path / "out.pt", case.call_kwargs_factory, STEPS]
    arguments += [json.dumps(dict(case.call_overrides)), case.output_attribute]
    assert launcher.main(["--config", str(config), "python", str(program), *map(str, arguments)]) == 0

    result = torch.load(tmp_path / "out.pt")
    reference = DiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    reference.set_progress_bar_config(disable=True)
    plain_reload = case.output(reference(**case.call_kwargs(STEPS)))
    loaded_renderer = type(renderer).from_pretrained(
        tmp_path / "pipeline" / "transformer" if same_as_sketcher else renderer_path
    )
    expected = case.output(swap_oracle(reference, loaded_renderer, SWITCH, case.call_kwargs(STEPS), case.denoisers))
    for output in result["outputs"]:
        assert_srd_output(mode, output, expected, plain_reload)
    assert result["enabled"] == [True, True]
    assert result["roles"] == [["sketch"] * SWITCH + ["render"] * (STEPS - SWITCH)] * 2
    reference.save_pretrained(tmp_path / "plain-copy")  # what diffusers writes for the same reloaded pipeline
    index = json.loads((tmp_path / "plain-copy" / "model_index.json").read_text())
    assert json.loads((tmp_path / "copy" / "model_index.json").read_text()) == index


# -- batches -----------------------------------------------------------------------------------
PROMPTS = ["a red circle moving left", "a blue square moving up"]


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@parametrize_modes
@parametrize_cases
def test_batch_equals_single_prompts(case, mode):
    """diffusers' batch-vs-single relation (one generator per prompt) holds under SRD as it does without."""
    skip_if_unsupported(case, "prompt_batch")
    pipe, _ = enabled(case, mode)
    batch = case.output(pipe(**case.call_kwargs(STEPS, prompt=PROMPTS, generator=generators(0, 1))))
    singles = [
        case.output(pipe(**case.call_kwargs(STEPS, prompt=p, generator=generators(s)[0])))
        for s, p in enumerate(PROMPTS)
    ]
    expected_batch = case.output(oracle(case, mode, prompt=PROMPTS, generator=generators(0, 1)))
    plain_batch = case.output(plain(case, prompt=PROMPTS, generator=generators(0, 1)))
    assert_srd_output(mode, batch, expected_batch, plain_batch)
    for s, (prompt, single) in enumerate(zip(PROMPTS, singles)):
        expected = case.output(oracle(case, mode, prompt=prompt, generator=generators(s)[0]))
        assert_srd_output(mode, single, expected, case.output(plain(case, prompt=prompt, generator=generators(s)[0])))
        torch.testing.assert_close(batch[s : s + 1], single, rtol=1e-4, atol=1e-4)  # diffusers' own tolerance


@parametrize_modes
@parametrize_cases
def test_num_videos_per_prompt(case, mode):
    """As many videos as the plain pipeline makes (CogVideoX ignores the argument), each the oracle's."""
    skip_if_unsupported(case, "num_videos_per_prompt")
    two = {case.per_prompt_argument: 2}
    pipe, _ = enabled(case, mode)
    got = case.output(pipe(**case.call_kwargs(STEPS, **two)))
    plain_output = case.output(plain(case, **two))
    assert got.shape == plain_output.shape
    assert_srd_output(mode, got, case.output(oracle(case, mode, **two)), plain_output)


# -- outputs and callbacks -----------------------------------------------------------------------
@parametrize_modes
@parametrize_cases
def test_dict_and_tuple_outputs(case, mode):
    pipe, _ = enabled(case, mode)
    as_dict = pipe(**case.call_kwargs(STEPS))
    as_tuple = pipe(**case.call_kwargs(STEPS, return_dict=False))
    assert isinstance(as_tuple, tuple) and not isinstance(as_dict, tuple)
    assert torch.equal(as_tuple[0], case.output(as_dict)) and torch.equal(as_dict[0], case.output(as_dict))
    assert_srd_output(mode, case.output(as_dict), oracle_frames(case, mode), plain_frames(case))


class Recorder:
    """A client's `callback_on_step_end`: records every tensor it is given and damps the latents at step 1."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, dict[str, torch.Tensor]]] = []

    def __call__(self, pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.steps.append((i, float(t), {name: value.clone() for name, value in tensors.items()}))
        if i == 1:
            tensors["latents"] = tensors["latents"] * 0.9
        return tensors


@parametrize_modes
@parametrize_cases
def test_callback_on_step_end_and_its_tensor_inputs(case, mode):
    """The callback sees every step with all the tensors it asked for, and its changes to the latents count."""
    pipe, _ = enabled(case, mode)
    names = list(pipe._callback_tensor_inputs)
    recorder = Recorder()
    got = pipe(**case.call_kwargs(STEPS, callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=names))
    reference = Recorder()
    expected = oracle(case, mode, callback_on_step_end=reference, callback_on_step_end_tensor_inputs=names)
    plain_output = case.output(plain(case, callback_on_step_end=Recorder(), callback_on_step_end_tensor_inputs=names))
    assert_srd_output(mode, case.output(got), case.output(expected), plain_output)
    assert [(i, t) for i, t, _ in recorder.steps] == [(i, t) for i, t, _ in reference.steps]
    assert [i for i, _, _ in recorder.steps] == list(range(STEPS))
    for (_, _, mine), (_, _, theirs) in zip(recorder.steps, reference.steps):
        assert sorted(mine) == sorted(names)
        assert all(torch.equal(mine[name], theirs[name]) for name in names)
    assert not torch.equal(
        case.output(got), case.output(pipe(**case.call_kwargs(STEPS)))
    )  # the damping at step 1 counted
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(**case.call_kwargs(STEPS, callback_on_step_end=Recorder(), callback_on_step_end_tensor_inputs=["x"]))
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), oracle_frames(case, mode))  # still usable


# -- memory and speed settings of the host ------------------------------------------------------------
@parametrize_modes
@parametrize_cases
def test_attention_slicing(case, mode):
    def slicing(pipe: Any, *_: Any) -> None:
        pipe.enable_attention_slicing("max")

    pipe, _ = enabled(case, mode)
    slicing(pipe)
    expected = case.output(oracle(case, mode, prepare=slicing))
    assert_srd_output(
        mode, case.output(pipe(**case.call_kwargs(STEPS))), expected, case.output(plain(case, prepare=slicing))
    )
    pipe.disable_attention_slicing()
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), oracle_frames(case, mode))


@parametrize_modes
@parametrize_cases
def test_vae_tiling(case, mode):
    """Decoded videos (not latents): tiled decoding of the SRD latents, as the plain pipeline would decode them."""

    def tiling(pipe: Any, *_: Any) -> None:
        case.enable_vae_tiling(pipe.vae)

    skip_if_unsupported(case, "vae_tiling")

    pipe, _ = enabled(case, mode)
    tiling(pipe)
    got = case.output(pipe(**case.call_kwargs(STEPS, output_type="pt")))
    expected = case.output(oracle(case, mode, prepare=tiling, output_type="pt"))
    assert_srd_output(mode, got, expected, case.output(plain(case, prepare=tiling, output_type="pt")))
    assert not torch.equal(expected, case.output(oracle(case, mode, output_type="pt")))  # the tiles really were used


@pytest.mark.parametrize("order", ["fused_before_enable", "fused_after_enable"])
@parametrize_modes
@parametrize_cases
def test_fused_qkv_projections(case, mode, order):
    """The client fuses the projections of both models (each is its own module), before or after `enable`."""

    def fuse(pipe: Any, renderer: torch.nn.Module) -> None:
        fuse_denoisers(case, pipe, renderer)

    skip_if_unsupported(case, "fused_qkv")
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    if order == "fused_before_enable":
        fuse(pipe, renderer)
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    if order == "fused_after_enable":
        fuse(pipe, renderer)
    got = case.output(pipe(**case.call_kwargs(STEPS)))
    expected = case.output(oracle(case, mode, prepare=fuse))
    plain_output = case.output(plain(case, prepare=lambda p: fuse_denoisers(case, p)))
    assert_srd_output(mode, got, expected, plain_output)
    for module in [getattr(pipe, name) for name in case.denoisers] + [renderer]:
        module.unfuse_qkv_projections()
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), oracle_frames(case, mode))


@pytest.mark.parametrize("order", ["offload_before_enable", "offload_after_enable"])
@parametrize_modes
@parametrize_cases
def test_model_cpu_offload(case, mode, order):
    """`enable_model_cpu_offload(device="cpu")` runs accelerate's real hooks on the CPU; the math is unchanged."""
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    if order == "offload_before_enable":
        pipe.enable_model_cpu_offload(device="cpu")
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    if order == "offload_after_enable":
        pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):
        got = case.output(pipe(**case.call_kwargs(STEPS)))
        assert_srd_output(mode, got, oracle_frames(case, mode), plain_frames(case))


# -- encode_prompt, from_pipe and shared components -------------------------------------------------
def _return_names(function: Callable) -> list[str]:
    """The names in the last `return a, b` of a function's source (how diffusers' test finds them)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value is not None]
    value = returns[-1].value
    elements = value.elts if isinstance(value, ast.Tuple) else [value]
    return [element.id for element in elements if isinstance(element, ast.Name)]


def encode_prompt_works_in_isolation(pipeline_class: type, components: dict[str, Any], inputs: Callable) -> tuple:
    """diffusers' `test_encode_prompt_works_in_isolation` (tests/pipelines/test_pipelines_common.py), condensed:
    encode with a pipeline holding only the text components, denoise with one holding all the others, and
    compare with a pipeline built from every component. Returns (isolated output, full output, pipelines)."""
    text_only = pipeline_class(**{k: (v if "text" in k or "tokenizer" in k else None) for k, v in components.items()})
    call_inputs = inputs()
    parameters = inspect.signature(text_only.encode_prompt).parameters
    call_parameters = inspect.signature(text_only.__call__).parameters
    encode_inputs = {k: call_inputs.pop(k) for k in list(call_inputs) if k in parameters}
    for name, parameter in parameters.items():
        if name not in ("self", "kwargs") and parameter.default is inspect.Parameter.empty:
            if name not in encode_inputs:
                encode_inputs[name] = call_parameters[name].default
    with torch.no_grad():
        encoded = text_only.encode_prompt(**encode_inputs)
    embeds = dict(zip(_return_names(text_only.encode_prompt), encoded))
    embeds = {k: v for k, v in embeds.items() if k in call_parameters}
    without_text = pipeline_class(
        **{k: (None if "text" in k or "tokenizer" in k else v) for k, v in components.items()}
    )
    without_text.set_progress_bar_config(disable=True)
    isolated = without_text(**call_inputs, **embeds)[0]
    full = pipeline_class(**components)
    full.set_progress_bar_config(disable=True)
    return isolated, full(**inputs())[0], (without_text, full)


@parametrize_modes
@parametrize_cases
def test_encode_prompt_works_in_isolation_under_srd_run(case, mode):
    """Under `srd-run` every pipeline built from the first one's components is enabled like it, and joins it."""
    skip_if_unsupported(case, "encode_prompt")
    renderer = case.renderer(mode, case.build_pipe())  # "same": the sketcher's weights, from the same seed
    settings = load_settings(None, enable=True, renderer=renderer, switch="step", switch_step=SWITCH)
    with launcher.watching(settings, log=lambda line: None):
        first = case.build_pipe()
        isolated, full, (without_text, full_pipe) = encode_prompt_works_in_isolation(
            type(first), first.components, lambda: case.call_kwargs(STEPS)
        )
    assert torch.equal(isolated, full)
    assert_srd_output(mode, full, oracle_frames(case, mode), plain_frames(case))
    assert srd.is_enabled(first) and srd.is_enabled(without_text) and srd.is_enabled(full_pipe)
    for pipe in (first, without_text, full_pipe):  # the latest call went through the shared components
        assert srd.last_trace(pipe).roles == ["sketch"] * SWITCH + ["render"] * (STEPS - SWITCH)


@parametrize_modes
@parametrize_cases
def test_encode_prompt_works_in_isolation_with_the_first_pipeline_enabled(case, mode):
    """The client enabled one pipeline; pipelines diffusers' test builds from its components (not enabled
    themselves) run through the same, enabled, components."""
    skip_if_unsupported(case, "encode_prompt")
    first, _ = enabled(case, mode)
    isolated, full, _ = encode_prompt_works_in_isolation(type(first), first.components, lambda: case.call_kwargs(STEPS))
    assert torch.equal(isolated, full)
    assert_srd_output(mode, full, oracle_frames(case, mode), plain_frames(case))
    assert torch.equal(case.output(first(**case.call_kwargs(STEPS))), full)


def share(case: CompatCase, how: str, pipe: Any) -> Any:
    """A second pipeline on `pipe`'s components, by `from_pipe` or by the constructor (with the pipeline's
    settings that are not components, such as Wan2.2's `boundary_ratio`, which `components` leaves out)."""
    if how == "from_pipe":
        skip_if_unsupported(case, "from_pipe")
        shared = type(pipe).from_pipe(pipe)
    else:
        parameters = inspect.signature(type(pipe).__init__).parameters
        settings = {k: v for k, v in pipe.config.items() if k in parameters and k not in pipe.components}
        shared = type(pipe)(**pipe.components, **settings)
    shared.set_progress_bar_config(disable=True)
    return shared


@pytest.mark.parametrize("how", ["from_pipe", "components"])
@parametrize_modes
@parametrize_cases
def test_pipelines_sharing_components_join_one_setup(case, mode, how):
    pipe, renderer = enabled(case, mode)
    second = share(case, how, pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # joining with the same renderer and settings is silent
        srd.enable(second, renderer, switch="step", switch_step=SWITCH)
    assert srd.is_enabled(pipe) and srd.is_enabled(second)
    expected, plain_output = oracle_frames(case, mode), plain_frames(case)
    assert_srd_output(mode, case.output(pipe(**case.call_kwargs(STEPS))), expected, plain_output)
    assert_srd_output(mode, case.output(second(**case.call_kwargs(STEPS))), expected, plain_output)
    pipe(**case.call_kwargs(STEPS + 1))  # the latest call through the shared components
    assert srd.last_trace(pipe).num_steps == srd.last_trace(second).num_steps == STEPS + 1


def scale_weights(_pipe: Any, renderer: torch.nn.Module) -> None:
    """Another renderer, by weights: every parameter times 1.01."""
    with torch.no_grad():
        for parameter in renderer.parameters():
            parameter.mul_(1.01)


@pytest.mark.parametrize("change", ["settings", "renderer"])
@pytest.mark.parametrize("how", ["from_pipe", "components"])
@parametrize_modes
@parametrize_cases
def test_other_settings_on_shared_components_replace_the_setup_of_both(case, mode, how, change):
    pipe, renderer = enabled(case, mode)
    second = share(case, how, pipe)
    if change == "settings":
        k, new_renderer, expected = 2, renderer, case.output(oracle(case, mode, k=2))
    else:
        k, new_renderer = SWITCH, copy.deepcopy(renderer)
        scale_weights(pipe, new_renderer)
        expected = case.output(oracle(case, mode, prepare=scale_weights))
        assert not torch.equal(expected, oracle_frames(case, mode))
    with pytest.warns(UserWarning) as caught:
        srd.enable(second, new_renderer, switch="step", switch_step=k)
    [warning] = [w for w in caught if issubclass(w.category, UserWarning)]  # one warning, naming the pipelines
    assert type(pipe).__name__ in str(warning.message)
    assert srd.is_enabled(pipe) and srd.is_enabled(second)
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), expected)
    assert srd.last_trace(pipe).switch_step == k
    assert torch.equal(case.output(second(**case.call_kwargs(STEPS))), expected)


@pytest.mark.parametrize("which", ["first", "second"])
@pytest.mark.parametrize("how", ["from_pipe", "components"])
@parametrize_cases
def test_disable_on_one_sharing_pipeline_disables_both(case, how, which):
    pipe, renderer = enabled(case, "other")
    second = share(case, how, pipe)
    srd.enable(second, renderer, switch="step", switch_step=SWITCH)
    srd.disable(pipe if which == "first" else second)
    assert not srd.is_enabled(pipe) and not srd.is_enabled(second)
    plain_output = plain_frames(case)
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), plain_output)
    assert torch.equal(case.output(second(**case.call_kwargs(STEPS))), plain_output)


# -- deep copies and pickling ---------------------------------------------------------------------
COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}


def drive(scheduler: Any, steps: int = STEPS) -> list[torch.Tensor]:
    """Step a scheduler by hand with fixed inputs; what a client loop would get back (a scheduler with
    resolution-dependent shifting, LTX's, is given the shift `mu` as its pipelines do)."""
    dynamic = scheduler.config.get("use_dynamic_shifting", False)
    scheduler.set_timesteps(steps, **({"mu": 1.0} if dynamic else {}))
    sample = torch.ones(1, 4, 2, 4, 4)
    outputs = []
    for i, t in enumerate(scheduler.timesteps):
        model_output = torch.full_like(sample, 0.1 * (i + 1))
        sample = scheduler.step(model_output, t, sample, return_dict=False)[0]
        outputs.append(sample)
    return outputs


@pytest.mark.parametrize("how", list(COPIES))
@parametrize_modes
@parametrize_cases
def test_a_copied_enabled_scheduler_is_an_independent_plain_scheduler(case, mode, how):
    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    before = copy.deepcopy(pipe.scheduler)
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    srd_output = case.output(pipe(**case.call_kwargs(STEPS)))
    trace = srd.last_trace(pipe)
    copied = COPIES[how](pipe.scheduler)
    assert copied is not pipe.scheduler
    reference = drive(before, STEPS + 2)
    assert all(torch.equal(a, b) for a, b in zip(drive(copied, STEPS + 2), reference))
    assert copied.num_inference_steps == STEPS + 2 and pipe.scheduler.num_inference_steps == STEPS  # its own state
    client = case.build_pipe()
    client.scheduler = copied
    assert torch.equal(case.output(client(**case.call_kwargs(STEPS))), plain_frames(case))
    assert srd.last_trace(pipe) is trace and srd.last_trace(client) is None
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), srd_output)  # the original keeps SRD
    srd.disable(pipe)
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), plain_frames(case))
    assert all(torch.equal(a, b) for a, b in zip(drive(copied, STEPS + 2), reference))  # unaffected by the disable


@pytest.mark.parametrize("how", list(COPIES))
@parametrize_modes
@parametrize_cases
def test_a_copied_enabled_transformer_is_plain(case, mode, how):
    pipe, _ = enabled(case, mode)
    srd_output = case.output(pipe(**case.call_kwargs(STEPS)))
    trace = srd.last_trace(pipe)
    copied = COPIES[how](pipe.transformer)
    assert copied is not pipe.transformer
    client = case.build_pipe()
    client.transformer = copied
    assert torch.equal(case.output(client(**case.call_kwargs(STEPS))), plain_frames(case))
    assert srd.last_trace(pipe) is trace
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), srd_output)


@pytest.mark.parametrize("how", list(COPIES))
@parametrize_modes
@parametrize_cases
def test_a_copied_enabled_pipeline_is_plain(case, mode, how):
    if how == "pickle":
        skip_if_unsupported(case, "pickle")
    pipe, _ = enabled(case, mode)
    srd_output = case.output(pipe(**case.call_kwargs(STEPS)))
    trace = srd.last_trace(pipe)
    copied = COPIES[how](pipe)
    assert not srd.is_enabled(copied) and srd.is_enabled(pipe)
    assert torch.equal(case.output(copied(**case.call_kwargs(STEPS))), plain_frames(case))
    assert srd.last_trace(pipe) is trace
    assert torch.equal(case.output(pipe(**case.call_kwargs(STEPS))), srd_output)


# -- diffusers' caches on either model --------------------------------------------------------------
CACHE_STEPS = 6
CACHE_SWITCH = 3  # three steps on each model, so a cache on either one has steps to skip


def plain_timesteps(case: CompatCase, steps: int) -> list[float]:
    """The timesteps of the plain pipeline's loop (what its scheduler gives for this call), once per module."""
    key = ("timesteps", case.name, steps)
    if key not in _MEMO:
        seen: list[float] = []
        plain(case, steps=steps, callback_on_step_end=lambda p, i, t, tensors: seen.append(float(t)) or tensors)
        _MEMO[key] = seen
    return _MEMO[key]


def cache_config(name: str, case: CompatCase, pipe: Any, first_step: int) -> Any:
    """A config of diffusers' cache `name` that skips work within a few tiny steps, for a model whose first
    step is `first_step`; `pipe` is the pipeline that runs the calls."""
    timestep = lambda: pipe.current_timestep  # noqa: E731 - what diffusers' docs pass
    if name == "FirstBlockCache":
        return FirstBlockCacheConfig(threshold=0.5)
    if name == "FasterCache":
        # FasterCache can only approximate from a computed call: the model's first step must lie outside the
        # range (diffusers' defaults do this for step 0; a renderer starts later)
        skip_range = (-1, plain_timesteps(case, CACHE_STEPS)[first_step] - 0.5)
        return FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=skip_range,
            unconditional_batch_skip_range=2,
            unconditional_batch_timestep_skip_range=skip_range,
            attention_weight_callback=lambda _: 0.5,
            current_timestep_callback=timestep,
            tensor_format=case.latent_format,
            is_guidance_distilled=not case.batched_cfg,  # Wan calls cond and uncond separately
        )
    if name == "PyramidAttentionBroadcast":
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=timestep,
        )
    if name == "MagCache":
        return MagCacheConfig(
            threshold=0.5,
            max_skip_steps=2,
            retention_ratio=0.2,
            num_inference_steps=CACHE_STEPS,
            mag_ratios=[1.0] * CACHE_STEPS,
        )
    if name == "TaylorSeer":
        return TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=1,
            cache_identifiers=[case.block_pattern],
            taylor_factors_dtype=torch.float32,
        )
    raise ValueError(name)


@pytest.mark.parametrize("where", ["sketcher_before_enable", "sketcher_after_enable", "renderer"])
@pytest.mark.parametrize("cache", CACHES)
@parametrize_modes
@parametrize_cases
def test_diffusers_cache_on_either_model(case, mode, cache, where):
    """The cached model behaves as in the swap oracle with the same cache on that model, call after call."""
    skip_if_unsupported(case, cache)

    def prepare(pipe: Any, renderer: torch.nn.Module) -> None:
        if where == "renderer":
            renderer.enable_cache(cache_config(cache, case, pipe, first_step=CACHE_SWITCH))
        else:
            pipe.transformer.enable_cache(cache_config(cache, case, pipe, first_step=0))

    pipe = case.build_pipe()
    renderer = case.renderer(mode, pipe)
    if where != "sketcher_after_enable":
        prepare(pipe, renderer)
    srd.enable(pipe, renderer, switch="step", switch_step=CACHE_SWITCH)
    if where == "sketcher_after_enable":
        prepare(pipe, renderer)
    expected = case.output(oracle(case, mode, k=CACHE_SWITCH, steps=CACHE_STEPS, prepare=prepare))
    uncached = oracle_frames(case, mode, k=CACHE_SWITCH, steps=CACHE_STEPS)
    assert not torch.equal(expected, uncached), f"{cache} skipped nothing on the {where.split('_')[0]}"
    for _ in range(2):  # every call starts the caches fresh
        assert torch.equal(case.output(pipe(**case.call_kwargs(CACHE_STEPS))), expected)


def pab_counter(model: torch.nn.Module) -> Callable[[], int]:
    """Reads the iteration counter of the first PyramidAttentionBroadcast hook inside `model`."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("pyramid_attention_broadcast") if registry is not None else None
        if hook is not None:
            return lambda: hook.state.iteration
    raise AssertionError("no PyramidAttentionBroadcast hook found")


@parametrize_modes
@parametrize_cases
def test_hook_counters_count_only_the_steps_of_their_own_model(case, mode):
    """Why diffusers' own cache tests that read a hook's counter (`state.iteration == i + 1` in a callback)
    cannot hold under SRD unchanged (docs/accelerators.md): each model's hooks count the calls it served."""
    skip_if_unsupported(case, "PyramidAttentionBroadcast")
    steps, k = 4, 2

    def pab(pipe: Any) -> PyramidAttentionBroadcastConfig:
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.current_timestep,
        )

    reference = case.build_pipe()
    reference.transformer.enable_cache(pab(reference))
    plain_count, plain_counts = pab_counter(reference.transformer), []
    reference(
        **case.call_kwargs(steps, callback_on_step_end=lambda p, i, t, kw: plain_counts.append(plain_count()) or kw)
    )
    calls = plain_counts[0]  # attention calls per step: 2 for separate CFG calls (Wan), 1 for a batched one
    # the steps the host ran `transformer` at: all of them, but for Wan2.2 only those of the high-noise expert
    served = [after > before for before, after in zip([0] + plain_counts, plain_counts)]
    assert calls > 0 and plain_counts == [calls * sum(served[: i + 1]) for i in range(steps)]
    if case.denoisers == ("transformer",):
        assert all(served)  # what diffusers' tests check: `state.iteration == i + 1` (times the calls per step)
    else:
        assert served == sorted(served, reverse=True) and not all(served)  # high-noise steps, then the other expert

    pipe, renderer = enabled(case, mode, k=k)
    pipe.transformer.enable_cache(pab(pipe))
    renderer.enable_cache(pab(pipe))
    sketcher_count, renderer_count = pab_counter(pipe.transformer), pab_counter(renderer)
    counts = []
    record = lambda p, i, t, kw: counts.append((sketcher_count(), renderer_count())) or kw  # noqa: E731
    for _ in range(2):
        counts.clear()
        pipe(**case.call_kwargs(steps, callback_on_step_end=record))
        assert counts == [(calls * sum(served[: min(i + 1, k)]), calls * max(0, i + 1 - k)) for i in range(steps)]
        # after the call diffusers resets its own components (the sketcher); the renderer keeps its count until
        # SRD resets it at the start of the next call (the second round checks that reset)
        assert (sketcher_count(), renderer_count()) == (0, calls * (steps - k))


# -- a renderer that needs latent alignment ----------------------------------------------------------
def _tuple_output(pipe: Any, enable: Callable[[Any], Any], kwargs: dict[str, Any]) -> torch.Tensor:
    return pipe(**kwargs, return_dict=False)[0]


def _attention_slicing(pipe: Any, enable: Callable[[Any], Any], kwargs: dict[str, Any]) -> torch.Tensor:
    pipe.enable_attention_slicing("max")
    return pipe(**kwargs).frames


def _model_cpu_offload(pipe: Any, enable: Callable[[Any], Any], kwargs: dict[str, Any]) -> torch.Tensor:
    pipe.enable_model_cpu_offload(device="cpu")
    return pipe(**kwargs).frames


def _recording_callback(pipe: Any, enable: Callable[[Any], Any], kwargs: dict[str, Any]) -> torch.Tensor:
    seen: list[int] = []

    def record(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        assert sorted(tensors) == sorted(pipe._callback_tensor_inputs)
        seen.append(i)
        return tensors

    names = list(pipe._callback_tensor_inputs)
    output = pipe(**kwargs, callback_on_step_end=record, callback_on_step_end_tensor_inputs=names).frames
    assert seen == list(range(STEPS))
    return output


def _from_pipe_after_disable(pipe: Any, enable: Callable[[Any], Any], kwargs: dict[str, Any]) -> torch.Tensor:
    """A pipeline made by `from_pipe` from a pipeline that is no longer enabled, then enabled itself."""
    srd.disable(pipe)
    shared = type(pipe).from_pipe(pipe)
    shared.set_progress_bar_config(disable=True)
    return enable(shared)(**kwargs).frames


ALIGNED_ACTIONS = {
    "tuple_output": _tuple_output,
    "attention_slicing": _attention_slicing,
    "model_cpu_offload": _model_cpu_offload,
    "callback_with_tensor_inputs": _recording_callback,
    "from_pipe_after_disable": _from_pipe_after_disable,
}
ALIGNED_CASES = [
    pytest.param(case, action, id=f"{case.name}-{action}")
    for case in CASES
    if case.aligned_renderer is not None
    for action in ALIGNED_ACTIONS
]


@pytest.mark.parametrize("case, action", ALIGNED_CASES)
def test_client_settings_with_an_aligned_renderer(case, action):
    """With a renderer of another parametrization (CogVideoX-2B-like: latents and timesteps aligned per call),
    settings that leave the arithmetic alone give SRD's own output bit for bit (and not the plain one)."""

    def enable(pipe: Any) -> Any:
        renderer, fields = case.aligned_renderer()
        return srd.enable(pipe, renderer, switch="step", switch_step=SWITCH, **fields)

    expected = case.output(enable(case.build_pipe())(**case.call_kwargs(STEPS)))
    assert not torch.equal(expected, plain_frames(case))
    got = ALIGNED_ACTIONS[action](enable(case.build_pipe()), enable, case.call_kwargs(STEPS))
    assert torch.equal(got, expected)


# -- x0 from the scheduler's own parametrization (the adaptive policy) ------------------------------
def reference_x0(scheduler: Any, model_output: torch.Tensor, t: Any, sample: torch.Tensor, index: int) -> torch.Tensor:
    """The x0 the scheduler's parametrization defines for step `index`, written out (unclipped)."""
    x, out = sample.double(), model_output.double()
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.config.prediction_type == "flow_prediction":
        return x - scheduler.sigmas[index].double() * out  # x_t = (1 - sigma) x0 + sigma noise, v = noise - x0
    abar = scheduler.alphas_cumprod[int(t)].double()
    if scheduler.config.prediction_type == "epsilon":
        return (x - (1 - abar).sqrt() * out) / abar.sqrt()
    assert scheduler.config.prediction_type == "v_prediction"
    return abar.sqrt() * x - (1 - abar).sqrt() * out


def expected_switch(
    distances: list[float | None], steps: int, threshold: float, min_steps: int, max_steps: int, first: int = 0
):
    """The adaptive rule (README), written out again: the first step the renderer runs, or None. `first` is the
    first step the policy observes (Wan2.2: the low-noise expert's first step; no decision before it)."""
    for i in range(first, steps - 1):
        s = distances[i - 1] - distances[i] if i >= first + 2 else None
        n = i + 1
        if n >= min_steps and ((s is not None and 0 < s < threshold) or n >= max_steps):
            return n
    return None


SCHEDULER_CASES = [pytest.param(case, name, id=f"{case.name}-{name}") for case in CASES for name in case.schedulers]


@pytest.mark.parametrize("case, scheduler", SCHEDULER_CASES)
def test_adaptive_policy_takes_x0_from_the_schedulers_own_parametrization(case, scheduler):
    """Epsilon, v-prediction and flow matching: the trace's d_i are those of the x0 the parametrization
    defines, and the switch is where the rule says."""
    steps, threshold, min_steps, max_steps = 8, 1.0, 2, 6
    recorded: list[torch.Tensor] = []
    timesteps: list[float] = []
    reference = case.build_pipe()
    reference.scheduler = case.schedulers[scheduler]()
    original_step = reference.scheduler.step

    def recording_step(model_output, timestep, sample, *args, **kwargs):
        recorded.append(reference_x0(reference.scheduler, model_output, timestep, sample, len(recorded)))
        timesteps.append(float(timestep))
        return original_step(model_output, timestep, sample, *args, **kwargs)

    reference.scheduler.step = recording_step
    reference(**case.call_kwargs(steps))
    boundary = reference.config.get("boundary_ratio")  # Wan2.2: the policy observes the low-noise expert only
    limit = boundary * reference.scheduler.config.num_train_timesteps if boundary is not None else float("inf")
    first = next(i for i, t in enumerate(timesteps) if t < limit)
    d = [None] + [
        float(torch.tanh((b - a).abs().mean() / a.abs().mean().clamp_min(1e-8))) if i >= first else None
        for i, (a, b) in enumerate(zip(recorded, recorded[1:]))
    ]
    switch = expected_switch(d, steps, threshold, min_steps, max_steps, first)
    assert switch is not None

    pipe = case.build_pipe()
    pipe.scheduler = case.schedulers[scheduler]()
    srd.enable(
        pipe, case.build_other_renderer(), threshold=threshold, min_sketch_steps=min_steps, max_sketch_steps=max_steps
    )
    got = case.output(pipe(**case.call_kwargs(steps)))
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.switch_step == switch
    assert trace.distances[0] is None
    observed = [i for i in range(1, switch) if d[i] is not None]  # Wan2.2: none before the low-noise expert
    assert [i for i in range(1, switch) if trace.distances[i] is not None] == observed
    assert [trace.distances[i] for i in observed] == pytest.approx([d[i] for i in observed], rel=1e-4, abs=1e-6)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("case", [c for c in CASES if "ddim_epsilon" in c.schedulers], ids=lambda c: c.name)
def test_adaptive_policy_with_a_plain_ddim_scheduler(case):
    """`DDIMScheduler()` as it comes (epsilon prediction, clip_sample=True) serves the adaptive policy."""
    pipe = case.build_pipe()
    pipe.scheduler = DDIMScheduler()
    srd.enable(pipe, case.build_other_renderer(), min_sketch_steps=2, max_sketch_steps=4)
    got = case.output(pipe(**case.call_kwargs(6)))
    trace = srd.last_trace(pipe)
    assert trace.completed and 2 <= trace.switch_step <= 4
    assert trace.roles == ["sketch"] * trace.switch_step + ["render"] * (6 - trace.switch_step)
    assert all(d is not None for d in trace.distances[1 : trace.switch_step])
    assert torch.isfinite(got).all()


def test_every_client_test_is_in_the_reliability_table():
    """docs/reliability.md ("What a diffusers client can rely on") and this module name each other completely."""
    root = Path(__file__).resolve().parents[1]
    module = ast.parse(Path(__file__).read_text())
    defined = {node.name for node in module.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    cited = set(re.findall(r"`test_diffusers_clients\.py::(test_\w+)`", (root / "docs" / "reliability.md").read_text()))
    assert sorted(defined - cited - {"test_every_client_test_is_in_the_reliability_table"}) == []
    assert sorted(cited - defined) == []
