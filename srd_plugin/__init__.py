"""srd-plugin: sketching-rendering cooperation for diffusers video pipelines.

The pipeline's own large transformer (the sketcher) runs the early, high-noise steps that
fix layout, semantics and motion; a small transformer of the same family (the renderer)
runs the remaining low-noise steps that refine detail. The switch point is chosen per
call, adaptively, from how fast the guided x0 prediction still changes.

    import srd_plugin as srd
    srd.enable(pipe, renderer="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    video = pipe(prompt, num_inference_steps=50).frames[0]
    print(srd.last_trace(pipe).summary())

Or, steered by a config file / SRD_* flags (off unless SRD_ENABLE or `enable` says so):

    srd.activate(pipe)
"""

from .activation import activate
from .api import disable, enable, is_enabled, last_trace, sketch_render
from .config import SRDConfig
from .errors import IncompatibleRendererError, RendererFailureError, UnsupportedPipelineError
from .hooks.teacache import TeaCacheConfig
from .trace import RunTrace

__version__ = "0.1.0"

__all__ = [
    "IncompatibleRendererError",
    "RendererFailureError",
    "RunTrace",
    "SRDConfig",
    "TeaCacheConfig",
    "UnsupportedPipelineError",
    "__version__",
    "activate",
    "disable",
    "enable",
    "is_enabled",
    "last_trace",
    "sketch_render",
]
