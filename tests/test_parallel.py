"""SRD under diffusers' context parallelism: 2 CPU processes (gloo, Ulysses degree 2) against 1 process.

The oracle is the single-process SRD run: split across two processes, every rank must
produce it bit for bit (Ulysses only regroups heads and tokens; with diffusers' "native"
attention the arithmetic per head is the same), with the same trace. The tiny pair has 4
and 2 heads (Ulysses 2 divides both) and 3x4x4 latent frames after the (1, 2, 2) patch:
12 tokens, which split evenly over 2 processes.

One torchrun launch (tests/parallel_worker.py) runs every multi-process configuration;
the other tests here need no second process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import ContextParallelConfig, WanTransformer3DModel
from parallel_worker import STEPS, SWITCH_STEP, SubclassedWan, subclassed_copy

import srd_plugin as srd
from srd_plugin import SRDConfig
from srd_plugin.parallel import broadcast_from_rank0, fitting_ulysses_degrees
from srd_plugin.parallel.context_parallel import degree_problems, setup_problems
from srd_plugin.runtime import session_of
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pair, tiny_wan_pipeline

WORKER = Path(__file__).with_name("parallel_worker.py")
RANKS = 2
#: trace fields that must be identical across ranks and equal to the single-process trace
DECISION_FIELDS = ("timesteps", "roles", "switch_step", "metrics", "distances", "completed", "fallback_step")


# -- the launch ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Results of every configuration on each of the 2 ranks (one torchrun launch)."""
    out = tmp_path_factory.mktemp("parallel")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([*command, str(WORKER), str(out)], capture_output=True, text=True, timeout=600, env=env)
    errors = "\n".join(p.read_text() for p in sorted(out.glob("rank*.error")))
    assert done.returncode == 0, f"torchrun failed:\n{errors}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


@pytest.fixture(scope="module")
def single() -> dict:
    """The same runs in this one process (the oracle)."""
    torch.set_num_threads(1)  # like each rank; keeps CPU kernels on the same code paths
    pipe, renderer = tiny_wan_pair()
    pipe.set_progress_bar_config(disable=True)
    results = {"plain": pipe(**tiny_call_kwargs(STEPS)).frames}
    for name, overrides in (("step", dict(switch="step", switch_step=SWITCH_STEP)), ("adaptive", {})):
        srd.enable(pipe, renderer, **overrides)
        results[name] = {"latents": pipe(**tiny_call_kwargs(STEPS)).frames, "trace": srd.last_trace(pipe).to_dict()}
    srd.disable(pipe)
    torch.set_num_threads(2)
    return results


def assert_same_run(result: dict, expected: dict) -> None:
    assert torch.equal(result["latents"], expected["latents"])
    for name in DECISION_FIELDS:
        assert result["trace"][name] == expected["trace"][name], name


# -- 2 ranks against 1 process --------------------------------------------------------------
@pytest.mark.parametrize("policy", ["step", "adaptive"])
def test_every_rank_reproduces_the_single_process_run(ranks, single, policy):
    switch = single[policy]["trace"]["switch_step"]
    assert 0 < switch < STEPS, "both models must run for the comparison to mean something"
    assert not torch.equal(single[policy]["latents"], single["plain"])
    for rank in ranks:
        assert_same_run(rank[policy], single[policy])
        assert rank[policy]["trace"]["config"]["parallel_config"]["ulysses_degree"] == 2


def test_traces_are_identical_on_all_ranks(ranks):
    """Including step_seconds (rank 0's, shared) and the events."""
    for name in ("step", "adaptive", "contrary", "user_split", "subclass"):
        first = ranks[0][name]["trace"]
        assert all(rank[name]["trace"] == first for rank in ranks[1:]), name
        assert len(first["step_seconds"]) == STEPS and all(s > 0 for s in first["step_seconds"])
        assert any("context parallel over 2 processes" in event for event in first["events"])
    assert json.loads(json.dumps(ranks[0]["adaptive"]["trace"]))["config"]["parallel_config"]["type"] == (
        "ContextParallelConfig"
    )


def test_a_disagreeing_rank_follows_rank0(ranks, single):
    """Rank 1's own policy would switch 3 steps later with other metrics; rank 0's decision is used."""
    for rank in ranks:
        assert_same_run(rank["contrary"], single["step"])
        assert rank["contrary"]["trace"]["metrics"] == [None] * STEPS


def test_disable_removes_both_splits(ranks, single):
    for rank in ranks:
        assert rank["clean_after_disable"] == (True, True)
        assert torch.equal(rank["plain"], single["plain"])


def test_renderer_follows_a_sketcher_the_user_split(ranks, single):
    for rank in ranks:
        assert rank["same_mesh"]
        assert_same_run(rank["user_split"], single["step"])
        # the user's split of the sketcher stays, the renderer's (SRD's) goes
        assert rank["after_disable_user_split"] == (True, True)


def test_subclass_renderer_runs_split(ranks, single):
    for rank in ranks:
        assert_same_run(rank["subclass"], single["step"])


def test_incompatible_degrees_are_refused_with_the_degrees_that_fit(ranks):
    for rank in ranks:
        three = rank["refused_three_heads"]
        assert "ulysses_degree=2 does not divide the renderer's 3 attention heads (sketcher 4, renderer 3)" in three
        assert "Ulysses degrees that fit both models: 1." in three
        assert "use ContextParallelConfig(ring_degree=2)" in three
        four = rank["refused_ulysses4"]
        assert "ulysses_degree=4 does not divide the renderer's 2 attention heads" in four
        assert "use ContextParallelConfig(ulysses_degree=2, ring_degree=2) or ContextParallelConfig(ring_degree=4)" in (
            four
        )
        assert "needs 4 processes, torch.distributed has 2" in four
        assert rank["untouched_after_refusals"]
        assert "renderer's 3 attention heads" in rank["refused_three_heads_user_split"]
        assert "pass only one of them" in rank["refused_twice_split"]


def test_a_split_made_after_enable_is_refused_at_the_next_call(ranks):
    for rank in ranks:
        assert "the sketcher was split across processes after srd.enable" in rank["split_after_enable"]


def test_example_tiny_run_agrees_across_ranks(ranks):
    assert [rank["example_exit_code"] for rank in ranks] == [0] * RANKS


# -- one process ----------------------------------------------------------------------------
def test_fitting_ulysses_degrees_of_the_real_pairs():
    assert fitting_ulysses_degrees([40, 12]) == [1, 2, 4]  # Wan2.1 14B / 1.3B
    assert fitting_ulysses_degrees([48, 30]) == [1, 2, 3, 6]  # CogVideoX 5B / 2B


def test_degree_problems_offer_the_same_process_count():
    wan = {"sketcher": 40, "renderer": 12}
    (problem,) = degree_problems(ContextParallelConfig(ulysses_degree=8), wan)
    assert "ulysses_degree=8 does not divide the renderer's 12 attention heads (sketcher 40, renderer 12)" in problem
    assert "Ulysses degrees that fit both models: 1, 2, 4." in problem
    assert (
        "use ContextParallelConfig(ulysses_degree=4, ring_degree=2) or ContextParallelConfig(ulysses_degree=2, "
        "ring_degree=4) or ContextParallelConfig(ring_degree=8)" in problem
    )
    assert degree_problems(ContextParallelConfig(ulysses_degree=4, ring_degree=2), wan) == []
    assert degree_problems(ContextParallelConfig(ring_degree=8), wan) == []
    assert degree_problems(ContextParallelConfig(ulysses_degree=8, ulysses_anything=True), wan) == []
    (problem,) = degree_problems(ContextParallelConfig(ulysses_degree=5), wan)
    assert "does not divide the renderer's 12 attention heads" in problem and "sketcher's" not in problem
    (problem,) = degree_problems(ContextParallelConfig(ulysses_degree=3), wan)
    assert "does not divide the sketcher's 40 attention heads" in problem
    assert "For the same 3 processes use ContextParallelConfig(ring_degree=3)" in problem
    (problem,) = degree_problems(ContextParallelConfig(ulysses_degree=16), wan)
    assert "does not divide the sketcher's 40 and the renderer's 12 attention heads" in problem
    assert "16 processes use ContextParallelConfig(ulysses_degree=4, ring_degree=4) or" in problem
    cog = {"sketcher": 48, "renderer": 30}
    assert degree_problems(ContextParallelConfig(ulysses_degree=3), cog) == []
    assert "fit both models: 1, 2, 3, 6" in degree_problems(ContextParallelConfig(ulysses_degree=4), cog)[0]


@pytest.fixture
def restored_attention_backend():
    """diffusers' `set_attention_backend` also sets the process-wide active backend: put it back, or
    later tests run on '_native_flash', which refuses attention masks (LTX)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active, _ = _AttentionBackendRegistry.get_active_backend()
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def test_setup_problems_name_the_attention_backend(renderer, restored_attention_backend):
    (ring,) = setup_problems(renderer, "renderer", ContextParallelConfig(ring_degree=2))
    assert "ring attention (ring_degree=2) needs the log-sum-exp" in ring and "'_native_cudnn'" in ring
    assert setup_problems(renderer, "renderer", ContextParallelConfig(ulysses_degree=2)) == []
    renderer.set_attention_backend("_native_math")
    (math_backend,) = setup_problems(renderer, "renderer", ContextParallelConfig(ulysses_degree=2))
    assert "attention backend '_native_math', which diffusers cannot run context-parallel" in math_backend
    renderer.set_attention_backend("_native_flash")
    assert setup_problems(renderer, "renderer", ContextParallelConfig(ring_degree=2)) == []


def test_parallel_config_without_torch_distributed_is_refused_before_any_change(pipe, renderer):
    with pytest.raises(ValueError, match="torch.distributed is not initialised; launch with torchrun"):
        srd.enable(pipe, renderer, parallel_config=ContextParallelConfig(ulysses_degree=2))
    assert not srd.is_enabled(pipe)
    assert "_parallel_config" not in vars(pipe.transformer) and "_parallel_config" not in vars(renderer)


def test_parallel_config_field_validates_and_serialises():
    with pytest.raises(ValueError, match="parallel_config.*ContextParallelConfig"):
        SRDConfig(parallel_config={"ulysses_degree": 2})
    data = SRDConfig(parallel_config=ContextParallelConfig(ring_degree=2, ulysses_degree=2)).to_dict()
    assert json.loads(json.dumps(data))["parallel_config"] == {
        "type": "ContextParallelConfig",
        "ulysses_degree": 2,
        "ring_degree": 2,
        "convert_to_fp32": True,
        "rotate_method": "allgather",
        "ulysses_anything": False,
        "ring_anything": False,
    }
    assert SRDConfig().to_dict()["parallel_config"] is None


def test_single_process_runs_have_no_parallel_state(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    assert "srd_plugin.parallel" not in session_of(pipe).plugin_state
    assert broadcast_from_rank0("mine", group=None) == "mine"


def test_subclass_renderer_is_accepted_and_equals_the_host_class(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    expected = pipe(**tiny_call_kwargs(6)).frames
    srd.enable(pipe, subclassed_copy(renderer), switch="step", switch_step=3)
    assert torch.equal(pipe(**tiny_call_kwargs(6)).frames, expected)


def test_subclass_sketcher_loads_its_renderer_with_its_own_class(tmp_path, renderer):
    """xDiT-style: the host transformer is a subclass; a renderer path is loaded with that class."""
    plain = tiny_wan_pipeline()
    sketcher = subclassed_copy(plain.transformer)
    pipe = tiny_wan_pipeline(transformer=sketcher)
    pipe.set_progress_bar_config(disable=True)
    renderer.save_pretrained(tmp_path / "renderer")
    srd.enable(pipe, tmp_path / "renderer", switch="step", switch_step=3)
    assert type(session_of(pipe).renderer) is SubclassedWan
    got = pipe(**tiny_call_kwargs(6)).frames
    # the oracle: the host class loaded from the same folder (a loaded model differs from the
    # in-memory original in the last bit on this CPU, so the folder is the common ground)
    srd.enable(pipe, WanTransformer3DModel.from_pretrained(tmp_path / "renderer"), switch="step", switch_step=3)
    assert torch.equal(got, pipe(**tiny_call_kwargs(6)).frames)
