"""What SRD attaches to host objects, and copies of those objects that leave it behind.

SRD works through instance-level attachments: the router is a diffusers hook on the sketcher
(a `_diffusers_hook` registry and a `forward` instance attribute), the scheduler wrapper is two
instance attributes (`set_timesteps`, `step`), the progress plugin wraps `progress_bar` on the
pipeline, TeaCache puts hooks on blocks. Python copies an object's `__dict__` with it, so a
naive `copy.deepcopy(pipe.scheduler)` of an enabled scheduler would carry functions that still
drive the *original* scheduler and session (a silent wrong result), and a pickle would fail on
them. diffusers deep-copies schedulers inside several pipelines, and users deep-copy and pickle
components to build second pipelines.

So every object SRD attaches something to gets two more instance attributes, `__deepcopy__`
and `__reduce_ex__`, which `copy` and `pickle` look up on the instance: they copy the object's
*plain* state, what it would hold had SRD never been enabled. A copy, and an unpickled object,
is therefore an ordinary, independent component, exactly like one copied before `enable`. The
two attributes go away with the last attachment, so `disable` leaves the object as it was.

Nothing here is assigned to a class; everything is per instance and undone by `detach_*`.
"""

from __future__ import annotations

import copy
import copyreg
import weakref
from dataclasses import dataclass, field
from typing import Any

_RECORD = "_srd_attached"
_COPY_ATTRIBUTES = ("__deepcopy__", "__reduce_ex__")
_ABSENT = object()


@dataclass
class _Record:
    """What SRD attached to one object, and what the object looked like before."""

    #: attribute name -> the value it had before SRD (or _ABSENT)
    attributes: dict[str, Any] = field(default_factory=dict)
    #: names of SRD's diffusers hooks on this module
    hooks: set[str] = field(default_factory=set)
    #: (had a `_diffusers_hook` registry, had a `forward` instance attribute) before SRD's first hook
    found: tuple[bool, bool] = (False, False)


def attach_attribute(obj: Any, name: str, value: Any) -> None:
    """Set `obj.<name> = value` on the instance; copies and pickles of `obj` get the previous value."""
    record = _record(obj, create=True)
    if name not in record.attributes:
        record.attributes[name] = obj.__dict__.get(name, _ABSENT)
    object.__setattr__(obj, name, value)


def detach_attribute(obj: Any, name: str, value: Any) -> None:
    """Undo `attach_attribute` if `obj.<name>` still is `value` (someone who wrapped it after us keeps theirs)."""
    record = _record(obj)
    if record is None or name not in record.attributes:
        return
    before = record.attributes.pop(name)
    if obj.__dict__.get(name) is value:
        if before is _ABSENT:
            del obj.__dict__[name]
        else:
            object.__setattr__(obj, name, before)
    _drop_if_empty(obj, record)


def claim_hook(module: Any, name: str) -> None:
    """Mark the diffusers hook `name`, about to be registered on `module`, as SRD's."""
    record = _record(module, create=True)
    if not record.hooks:
        record.found = (hasattr(module, "_diffusers_hook"), "forward" in module.__dict__)
    record.hooks.add(name)


def release_hook(module: Any, name: str) -> None:
    """Forget the hook `name` (after it was removed from `module`)."""
    record = _record(module)
    if record is None:
        return
    record.hooks.discard(name)
    _drop_if_empty(module, record)


def found_before_hooks(module: Any) -> tuple[bool, bool]:
    """(had a `_diffusers_hook` registry, had a `forward` instance attribute) before SRD's first hook."""
    record = _record(module)
    return record.found if record is not None else (True, True)


def plain_state(obj: Any) -> dict[str, Any]:
    """`obj.__dict__` as it would be without SRD (a shallow dict; values are shared with `obj`)."""
    state = dict(obj.__dict__)
    for name in (_RECORD, *_COPY_ATTRIBUTES):
        state.pop(name, None)
    record = _record(obj)
    if record is None:
        return state
    for name, before in record.attributes.items():
        if before is _ABSENT:
            state.pop(name, None)
        else:
            state[name] = before
    if record.hooks:
        _plain_hooks(state, record)
    return state


# -- internals ---------------------------------------------------------------------------------
def _record(obj: Any, create: bool = False) -> _Record | None:
    record = obj.__dict__.get(_RECORD)
    if record is None and create:
        record = _Record()
        object.__setattr__(obj, _RECORD, record)
        _install_copiers(obj)
    return record


def _drop_if_empty(obj: Any, record: _Record) -> None:
    if record.attributes or record.hooks:
        return
    for name in (_RECORD, *_COPY_ATTRIBUTES):
        obj.__dict__.pop(name, None)


def _install_copiers(obj: Any) -> None:
    """`copy.deepcopy` and `pickle` look these up on the instance before the class."""
    ref = weakref.ref(obj)

    def __deepcopy__(memo: dict[int, Any]) -> Any:
        original = ref()
        cls = type(original)
        duplicate = cls.__new__(cls)
        memo[id(original)] = duplicate
        _set_state(duplicate, copy.deepcopy(plain_state(original), memo))
        return duplicate

    def __reduce_ex__(protocol: int) -> tuple:
        original = ref()
        return (copyreg.__newobj__, (type(original),), plain_state(original))

    object.__setattr__(obj, "__deepcopy__", __deepcopy__)
    object.__setattr__(obj, "__reduce_ex__", __reduce_ex__)


def _set_state(obj: Any, state: dict[str, Any]) -> None:
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        obj.__dict__.update(state)


def _plain_hooks(state: dict[str, Any], record: _Record) -> None:
    """Drop SRD's hooks from a module's state: its registry without them, its forward from before them.

    SRD registers its hooks last (the router is the outermost hook), so the hooks before the first
    of ours are the module's own and stay; a foreign hook registered after ours wraps our forward
    and cannot be separated from it, so then the state is left as it is.
    """
    registry = state.get("_diffusers_hook")
    if registry is None:
        return
    order = list(registry._hook_order)
    first = next((i for i, name in enumerate(order) if name in record.hooks), None)
    if first is None or any(name not in record.hooks for name in order[first:]):
        return
    fn_ref = registry._fn_refs[first]
    forward_before = fn_ref.original_forward if fn_ref.original_forward is not None else fn_ref.forward
    registry_existed, forward_was_attribute = record.found
    if first == 0 and not registry_existed:
        del state["_diffusers_hook"]
    else:
        plain = copy.copy(registry)
        plain.hooks = {name: registry.hooks[name] for name in order[:first]}
        plain._hook_order = order[:first]
        plain._fn_refs = list(registry._fn_refs[:first])
        state["_diffusers_hook"] = plain
    if first == 0 and not forward_was_attribute:
        state.pop("forward", None)
    else:
        state["forward"] = forward_before
