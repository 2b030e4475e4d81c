"""A recorder of weight movements for the memory tests: which module went where, at which point of a call.

Every whole-model move the memory plugins, accelerate's model offloading and diffusers make goes
through the model's `to(...)`; the recorder wraps `to` of the watched models' class (through
`monkeypatch`, so it is undone after the test) and interleaves the moves with lifecycle markers
from a plugin registered for the test:

    ("enable",)            srd.enable places the renderer
    ("call",)              a pipeline call starts (before the renderer is placed)
    ("step", i, role)      step i ended, run by role
    ("switch", i)          the renderer takes over from step i
    ("fallback", i)        the sketcher takes over again from step i
    ("end",)               the call's denoising ended
    (name, device)         module `name` was moved to `device`
    (name, device, "failed")  that move raised an (injected) out-of-memory error

The markers use `tryfirst`, so they precede the moves the plugins make in the same hook.
"""

from __future__ import annotations

from typing import Any

import torch

from srd_plugin.hookspecs import hookimpl
from srd_plugin.manager import get_plugin_manager


def _device_of(args: tuple, kwargs: dict[str, Any]) -> torch.device | None:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, torch.device):
            return value
        if isinstance(value, (str, int)):
            try:
                return torch.device(value)
            except RuntimeError:
                continue
    return None


class MovementRecorder:
    def __init__(self, monkeypatch: Any) -> None:
        self.events: list[tuple] = []
        self._monkeypatch = monkeypatch
        self._failing: tuple[str, str] | None = None
        self._names: dict[int, str] = {}
        self._patched: set[type] = set()

    def watch(self, name: str, module: torch.nn.Module) -> None:
        """Record every `module.to(device)`; patched on the class, because accelerate's
        `remove_hook_from_module` deletes instance attributes named `to`."""
        cls = type(module)
        if cls not in self._patched:
            self._patched.add(cls)
            original = cls.to
            names = self._names

            def to(instance: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
                name = names.get(id(instance))
                device = _device_of(args, kwargs)
                if name is not None and device is not None:
                    self._record(name, device)
                return original(instance, *args, **kwargs)

            self._monkeypatch.setattr(cls, "to", to)
        self._names[id(module)] = name

    def _record(self, name: str, device: torch.device) -> None:
        if (name, str(device)) == self._failing:
            self.events.append((name, str(device), "failed"))
            raise torch.OutOfMemoryError(f"out of memory moving the {name} to {device} (injected)")
        self.events.append((name, str(device)))

    def fail(self, name: str, device: str) -> None:
        """From now on, moving module `name` to `device` raises `torch.OutOfMemoryError` (recorded as failed)."""
        self._failing = (name, device)

    def take(self) -> list[tuple]:
        """The events so far, with consecutive identical moves collapsed; clears the record."""
        events, self.events = self.events, []
        collapsed: list[tuple] = []
        for event in events:
            if not (collapsed and event == collapsed[-1] and event[0] not in ("step", "call", "end", "enable")):
                collapsed.append(event)
        return collapsed

    # -- lifecycle markers (pluggy hooks) ------------------------------------------------------
    @hookimpl(tryfirst=True)
    def srd_place_renderer(self, session: Any, run: Any) -> None:
        self.events.append(("enable",) if run is None else ("call",))

    @hookimpl(tryfirst=True)
    def srd_step_end(self, session: Any, run: Any, step_index: int) -> None:
        self.events.append(("step", step_index, run.phase))

    @hookimpl(tryfirst=True)
    def srd_switch(self, session: Any, run: Any, step_index: int) -> None:
        self.events.append(("switch", step_index))

    @hookimpl(tryfirst=True)
    def srd_fallback(self, session: Any, run: Any, step_index: int) -> None:
        self.events.append(("fallback", step_index))

    @hookimpl(tryfirst=True)
    def srd_run_end(self, session: Any, run: Any) -> None:
        self.events.append(("end",))


def register(recorder: MovementRecorder) -> None:
    get_plugin_manager().register(recorder, name="test-movements")


def unregister() -> None:
    get_plugin_manager().unregister(name="test-movements")
