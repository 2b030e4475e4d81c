"""Shared fixtures: tiny offline Wan pipelines and renderers (random weights, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

from srd_plugin.testing import tiny_wan_pipeline, tiny_wan_renderer

# SRD_TEST_THREADS=1 on a machine shared by many jobs: oversubscribed OpenMP threads spin and can
# make each tiny call 10-40x slower than with one thread
torch.set_num_threads(int(os.environ.get("SRD_TEST_THREADS", "2")))


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
