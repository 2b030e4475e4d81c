"""Loads pass `dtype=`, the keyword the installed diffusers expects (0.42 deprecates `torch_dtype=`).

pyproject's pytest settings ignore FutureWarning everywhere, so these tests turn diffusers'
deprecation warning into an error locally. `DiffusionPipeline.from_pretrained` warns on
`torch_dtype`; `ModelMixin.from_pretrained` (a renderer load) accepts both silently in 0.42.1,
so the renderer test also records the keywords the loader is called with.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import WanTransformer3DModel

import srd_plugin as srd
from srd_plugin.generate import load_pipeline
from srd_plugin.testing import tiny_wan_pipeline, tiny_wan_renderer

DEPRECATED = r".*`torch_dtype` is deprecated.*"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loading")
    tiny_wan_pipeline().save_pretrained(folder / "pipeline")
    tiny_wan_renderer().save_pretrained(folder / "renderer")
    return folder


def test_srd_generate_loads_the_pipeline_without_the_deprecated_keyword(saved):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=DEPRECATED, category=FutureWarning)
        pipe = load_pipeline(str(saved / "pipeline"), torch.bfloat16, "cpu", log=lambda line: None)
    assert pipe.transformer.dtype == torch.bfloat16


def test_a_renderer_path_is_loaded_with_dtype(saved, monkeypatch):
    calls: list[dict] = []
    original = WanTransformer3DModel.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "from_pretrained", classmethod(recording))
    pipe = tiny_wan_pipeline()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=DEPRECATED, category=FutureWarning)
        srd.enable(pipe, str(saved / "renderer"), renderer_dtype="bfloat16")
    assert [set(kwargs) & {"dtype", "torch_dtype"} for kwargs in calls] == [{"dtype"}]
    assert calls[0]["dtype"] == torch.bfloat16
    srd.disable(pipe)
