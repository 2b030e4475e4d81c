"""A miniature text-to-video world where sketching and rendering can be measured on the CPU.

Procedural clips ("a red circle moving left"), a trained pair of Wan transformers in the
real host format (a large sketcher, a renderer several times cheaper per step), and
evaluators that know the ground truth. See docs/miniature.md.

    from srd_plugin.miniature import load_miniature_pipeline, miniature_call_kwargs
    import srd_plugin as srd

    pipe, renderer = load_miniature_pipeline()
    srd.enable(pipe, renderer)
    frames = pipe(**miniature_call_kwargs("a red circle moving left", seed=0)).frames[0]
"""

from .models import WEIGHTS_DIR, load_miniature_pipeline, miniature_call_kwargs

__all__ = ["WEIGHTS_DIR", "load_miniature_pipeline", "miniature_call_kwargs"]
