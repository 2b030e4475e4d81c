"""Adapter for diffusers' SkyReels-V2 pipelines (Wan2.1 architecture, its own transformer class).

SkyReels-V2 14B and 1.3B (540P) share the Wan2.1 VAE, the umT5 text encoder and the
flow-matching parametrization, so the renderer takes the host's arguments unchanged, as for
Wan: `SkyReelsV2Pipeline` (text-to-video) and `SkyReelsV2ImageToVideoPipeline` (CLIP image
embedding and a 36-channel input, as Wan2.1 I2V) are served through the Wan adapter's rules
with the SkyReels transformer class.

One SkyReels-specific entry: `inject_sample_info` (the DF-1.3B checkpoint's fps embedding).
The text-to-video and image-to-video pipelines do not pass `fps`, so a renderer that needs
it is refused there.

The diffusion-forcing pipelines (`SkyReelsV2DiffusionForcing*`) are refused with the reason:
they deep-copy the scheduler once per latent frame and step those copies, several per loop
step, with 2-D (per-frame) timesteps, and run one loop per window for long videos. The
runtime counts steps on the pipeline's own scheduler, and a deep copy of an enabled scheduler
is by design a plain, independent scheduler (docs/reliability.md): the steps of those loops
never reach SRD, so a switch cannot be placed. Serving them needs a step signal of their own
(e.g. an adapter hook on the per-frame copies); docs/adapters.md proposes the semantics.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedPipelineError
from ..hookspecs import hookimpl
from .wan import WanAdapter

PIPELINE_CLASSES = ("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline")
DIFFUSION_FORCING_CLASSES = (
    "SkyReelsV2DiffusionForcingPipeline",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
)

DIFFUSION_FORCING_REASON = (
    "diffusion forcing deep-copies the scheduler per latent frame and steps the copies with per-frame (2-D) "
    "timesteps, several times per loop step and once more per window; those copies are plain schedulers, so "
    "SRD cannot count the loop's steps. Use SkyReelsV2Pipeline or SkyReelsV2ImageToVideoPipeline "
    "with the SkyReels-V2 T2V / I2V checkpoints"
)


class SkyReelsAdapter(WanAdapter):
    name = "skyreels_v2"
    pipeline_classes = PIPELINE_CLASSES
    transformer_class_name = "SkyReelsV2Transformer3DModel"
    renderer_example = "Skywork/SkyReels-V2-T2V-1.3B-540P-Diffusers"

    def serves(self, pipe: Any) -> bool:
        """The diffusion-forcing pipelines too, so that `enable` refuses them with the reason."""
        return super().serves(pipe) or type(pipe).__name__ in DIFFUSION_FORCING_CLASSES

    def check_pipeline(self, pipe: Any) -> None:
        if type(pipe).__name__ in DIFFUSION_FORCING_CLASSES:
            raise UnsupportedPipelineError(pipe, list(self.pipeline_classes), reason=DIFFUSION_FORCING_REASON)
        if getattr(pipe, "transformer", None) is None:
            raise UnsupportedPipelineError(pipe, list(self.pipeline_classes), reason="the pipeline has no transformer")

    def first_observed_step(self, pipe: Any, timesteps: list[float], num_train_timesteps: int) -> int:
        return 0

    def routed_modules(self, pipe: Any) -> tuple[torch.nn.Module, ...]:
        return (pipe.transformer,)

    def extra_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        problems = super().extra_problems(sketcher, renderer)
        if renderer.config.inject_sample_info and not sketcher.config.inject_sample_info:
            problems.append(
                "fps conditioning (inject_sample_info): the renderer embeds the frame rate, the sketcher does not, "
                "and SkyReelsV2Pipeline / SkyReelsV2ImageToVideoPipeline pass no fps; use a renderer without it"
            )
        return problems


ADAPTER = SkyReelsAdapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
srd_check_setup = ADAPTER.srd_check_setup


@hookimpl
def srd_pipeline_classes() -> list[type]:
    """`srd-run` also watches the diffusion-forcing pipelines, so that it says why it leaves them untouched."""
    import diffusers

    return [getattr(diffusers, name) for name in DIFFUSION_FORCING_CLASSES]
