"""Shared fixtures: tiny offline Wan pipelines and renderers (random weights, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

from srd_plugin.testing import tiny_wan_pipeline, tiny_wan_renderer

# One thread by default: the test models are tiny (overhead-bound), and on a machine shared by
# several jobs oversubscribed OpenMP threads spin and make each tiny call 10-40x slower.
# SRD_TEST_THREADS=2 to use both cores of a quiet machine.
torch.set_num_threads(int(os.environ.get("SRD_TEST_THREADS", "1")))


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A work folder of the second miniature world's tiny recipe (`train2 --tiny`, seconds), trained once
    per session: its result/ is the pair the second world's tests and quality2's tests generate with."""
    from srd_plugin.miniature import train2

    work = tmp_path_factory.mktemp("second") / "work"
    assert train2.main(["--work", str(work), "--tiny", "--check-vae"]) == 0
    return work
