"""Phase-aware progress: the host's tqdm bar names the running phase, per instance, and leaves no trace."""

from __future__ import annotations

import gc
import io
import re
import weakref

import srd_plugin as srd
from srd_plugin.hooks.progress import STATE_KEY
from srd_plugin.runtime import session_of
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline

BAR_LINE = re.compile(r"(?:(?P<desc>[^\r\n:|]*): )?\s*\d+%\|[^|]*\| (?P<done>\d+)/(?P<total>\d+)")


def bar_lines(text: str) -> list[tuple[str, int]]:
    """(description, steps done) of every state tqdm printed."""
    return [(m["desc"] or "", int(m["done"])) for m in BAR_LINE.finditer(text)]


def run_with_bar(pipe, steps: int, **config) -> str:
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, mininterval=0, **config)
    pipe(**tiny_call_kwargs(steps))
    return stream.getvalue()


def test_bar_names_the_phase_of_the_next_step(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    lines = bar_lines(run_with_bar(pipe, 6))
    roles = srd.last_trace(pipe).roles
    assert roles == ["sketch"] * 3 + ["render"] * 3
    assert [done for _, done in lines][:7] == list(range(7))
    for desc, done in lines:
        now = roles[min(done, len(roles) - 1)]  # the phase running after `done` steps
        assert desc == f"SRD {now}", (desc, done)


def test_renderer_only_run_is_labelled_render_from_the_first_line(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    lines = bar_lines(run_with_bar(pipe, 3))
    assert lines and {desc for desc, _ in lines} == {"SRD render"}


def test_user_description_is_kept_and_config_object_untouched(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, mininterval=0, desc="clip 7")
    user_config = pipe._progress_bar_config
    snapshot = dict(user_config)
    pipe(**tiny_call_kwargs(2))
    assert pipe._progress_bar_config is user_config and user_config == snapshot
    assert {desc for desc, _ in bar_lines(stream.getvalue())} == {"clip 7 (SRD sketch)", "clip 7 (SRD render)"}


def test_disabled_bar_stays_silent(pipe, renderer, capsys):
    # the `pipe` fixture has set_progress_bar_config(disable=True)
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    pipe(**tiny_call_kwargs(2))
    captured = capsys.readouterr()
    assert "SRD" not in captured.err + captured.out
    assert pipe._progress_bar_config == {"disable": True}


def test_only_the_enabled_instance_is_labelled(pipe, renderer):
    other = tiny_wan_pipeline()
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    assert "progress_bar" in pipe.__dict__ and "progress_bar" not in other.__dict__
    assert "progress_bar" not in type(pipe).__dict__
    plain = bar_lines(run_with_bar(other, 2))
    assert plain and all(desc == "" for desc, _ in plain)


def test_disable_restores_exactly(pipe, renderer):
    run_with_bar(pipe, 2)  # a plain call first: the host sets its own per-call attributes
    before = dict(pipe.__dict__)
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    assert "progress_bar" not in pipe.config
    run_with_bar(pipe, 2)
    srd.disable(pipe)
    assert "progress_bar" not in pipe.__dict__
    assert set(pipe.__dict__) == set(before)


def test_a_user_instance_attribute_is_wrapped_and_put_back(pipe, renderer):
    calls = []

    def own_progress_bar(*args, **kwargs):
        calls.append(kwargs)
        return type(pipe).progress_bar(pipe, *args, **kwargs)

    pipe.progress_bar = own_progress_bar
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    lines = bar_lines(run_with_bar(pipe, 2))
    assert calls == [{"total": 2}] and {desc for desc, _ in lines} == {"SRD sketch", "SRD render"}
    srd.disable(pipe)
    assert pipe.__dict__["progress_bar"] is own_progress_bar


def test_bar_is_not_kept_after_the_call(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    pipe(**tiny_call_kwargs(2))
    assert session_of(pipe).plugin_state[STATE_KEY].bar is None


def test_enabled_pipeline_can_still_be_freed(renderer):
    pipe = tiny_wan_pipeline()
    srd.enable(pipe, renderer)
    reference = weakref.ref(pipe)
    del pipe
    gc.collect()
    assert reference() is None
