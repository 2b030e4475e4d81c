"""Shared fixtures: tiny offline Wan pipelines and renderers (random weights, CPU)."""

from __future__ import annotations

import pytest
import torch

from srd_plugin.testing import tiny_wan_pipeline, tiny_wan_renderer

torch.set_num_threads(2)


@pytest.fixture
def pipe():
    pipeline = tiny_wan_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def euler_pipe():
    pipeline = tiny_wan_pipeline(scheduler="euler")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def renderer():
    return tiny_wan_renderer()
