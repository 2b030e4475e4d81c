"""`srd-run`: run an unmodified Python program with SRD on every supported pipeline it builds.

    srd-run [--config FILE] [--] python SCRIPT.py ARGS...
    srd-run [--config FILE] [--] python -m MODULE ARGS...
    srd-run [--config FILE] [--] SCRIPT.py ARGS...

The program runs in this process (`runpy`, as `python` would run it: `__name__ ==
"__main__"`, `sys.argv`, `sys.path[0]`). Settings come from `srd_plugin.settings`: `--config`
(else `SRD_CONFIG`) names the file, `SRD_*` variables override it; a `renderer =
"module:function"` factory is imported as the program's own `import` would find it (the
script's folder first, or the current one for `-m`), and also from the folder of the config
file that names it. SRD is on unless the `enable` key or `SRD_ENABLE` turns it off, and then
the program runs with nothing installed at all, so its outputs are bit for bit those of the
plain program. Each pipeline SRD is enabled on gets one line on stderr (class, renderer,
policy); a pipeline no adapter supports, or one `enable` refuses, is left untouched with a
one-line warning and the program goes on.

How pipelines are found, and why this way. The program cannot be edited, and Python looks
`__init__` and `__call__` up on the class, so no per-instance mechanism sees a pipeline being
built. The alternatives were: a profiler or tracer (`sys.setprofile`: a cost on every Python
call of the whole program, for its whole run); `sys.monitoring` on the constructors' code
objects (Python >= 3.12 only); replacing `diffusers.WanPipeline` in the module namespace by a
subclass (misses `from diffusers.pipelines.wan import WanPipeline`, and changes the type of
the user's objects); enabling lazily at a pipeline's first `scheduler.set_timesteps`
(needs a class-level wrapper too, on every scheduler class, and guessing the pipeline from
the caller's frame). The least intrusive reliable point is construction itself: for the time
the program runs, and only in this process, `srd-run` wraps
  * `DiffusionPipeline.from_pretrained` and `DiffusionPipeline.from_pipe` (every pipeline
    loaded from weights, of any class: supported ones are enabled, others get the warning);
  * `__init__` of each class an adapter supports (`srd_pipeline_classes`, and the diffusers
    classes named by `srd_supported_pipelines`), for pipelines built from components.
The wrappers call the original and then enable SRD on the finished instance, through the
same per-instance `enable` as host code would; no forward, `__call__` or scheduler method of
any class is touched. They are removed when the program ends (also on an exception or
`sys.exit`), and a wrapper that the program itself replaced in the meantime is left alone
(ours then does nothing). An unsupported pipeline built directly from components (not via
`from_pretrained`) is not seen, so it runs untouched without the warning.

Everything the launcher runs on the program's behalf (reading the settings, which imports a
renderer factory's module; installing the wrappers; building the renderer and `enable` after
each pipeline, refused ones included) runs under `random_state.preserved_random_state`: the
program's global torch, numpy and `random` streams are afterwards exactly as the plain program
would have them, so a program that samples without a `generator` draws the same noise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import runpy
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .random_state import preserved_random_state
from .settings import Settings, load_settings

USAGE = "usage: srd-run [--config FILE] [--] (python SCRIPT.py | python -m MODULE | SCRIPT.py) [ARGS...]"
_PYTHON = re.compile(r"python[\d.]*(\.exe)?")


def report(line: str) -> None:
    print(f"srd-run: {line}", file=sys.stderr, flush=True)


# -- the command line ----------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    """What to run: a script path or a module name, with its own arguments."""

    script: str | None
    module: str | None
    args: list[str] = field(default_factory=list)


def parse_arguments(argv: list[str]) -> tuple[str | None, Program]:
    """Split `srd-run`'s own options from the program's command; a ValueError says what is wrong."""
    config_file = None
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            index += 1
            break
        if argument == "--config":
            if index + 1 >= len(argv):
                raise ValueError("--config needs a file: srd-run --config srd.toml python script.py")
            config_file = argv[index + 1]
            index += 2
        elif argument.startswith("--config="):
            config_file = argument.split("=", 1)[1]
            index += 1
        elif argument.startswith("-"):
            raise ValueError(f"unknown option {argument!r}; srd-run's only option is --config FILE")
        else:
            break
    return config_file, parse_command(argv[index:])


def parse_command(command: list[str]) -> Program:
    if not command:
        raise ValueError("no program to run")
    head, rest = command[0], command[1:]
    if _PYTHON.fullmatch(os.path.basename(head)):
        if rest[:1] == ["-m"]:
            if len(rest) < 2:
                raise ValueError("python -m needs a module name")
            return Program(script=None, module=rest[1], args=rest[2:])
        if not rest or rest[0].startswith("-"):
            option = f" (interpreter option {rest[0]!r} is not supported)" if rest else ""
            raise ValueError(f"srd-run runs `python SCRIPT.py` or `python -m MODULE`{option}")
        head, rest = rest[0], rest[1:]
    if not os.path.isfile(head):
        raise ValueError(f"script {head!r} does not exist")
    return Program(script=head, module=None, args=rest)


def program_folder(program: Program) -> str:
    """The folder `python` puts first on `sys.path` for this program: the script's, else (`-m`) the current one."""
    if program.script is not None:
        return os.path.dirname(os.path.abspath(program.script))
    return os.getcwd()


def run_program(program: Program) -> None:
    """Run the program as `python` would, in this process; `sys.argv` and `sys.path` are restored after."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        sys.path[0] = program_folder(program)
        if program.script is not None:
            sys.argv = [program.script, *program.args]
            runpy.run_path(program.script, run_name="__main__")
        else:
            sys.argv = [program.module, *program.args]  # run_module puts the module's path here
            runpy.run_module(program.module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv[:], sys.path[:] = saved_argv, saved_path


# -- watching pipeline construction ---------------------------------------------------------
class PipelineWatcher:
    """Enables SRD on each pipeline the program builds (see the module docstring for why so)."""

    def __init__(self, settings: Settings, log: Callable[[str], None] = report) -> None:
        self.settings = settings
        self.log = log
        self.count = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()  # pipelines may be built in several threads
        self._depth = threading.local()
        self._installed: list[tuple[type, str, Any, Any]] = []  # (class, name, previous or None, ours)

    # -- install / uninstall --------------------------------------------------------------
    def install(self) -> None:
        from diffusers import DiffusionPipeline

        for name in ("from_pretrained", "from_pipe"):
            loader = DiffusionPipeline.__dict__[name].__func__
            self._replace(DiffusionPipeline, name, classmethod(self._wrap(loader, builds_first=False)))
        for cls in watched_classes():
            self._replace(cls, "__init__", self._wrap(cls.__init__, builds_first=True))

    def uninstall(self) -> None:
        while self._installed:
            cls, name, previous, ours = self._installed.pop()
            if cls.__dict__.get(name) is not ours:
                continue  # the program replaced our wrapper; leave its own in place
            if previous is None:
                delattr(cls, name)
            else:
                setattr(cls, name, previous)

    def _replace(self, cls: type, name: str, ours: Any) -> None:
        self._installed.append((cls, name, cls.__dict__.get(name), ours))
        setattr(cls, name, ours)

    def _wrap(self, original: Callable, builds_first: bool) -> Callable:
        """Call `original`; when the outermost watched call returns, enable SRD on the pipeline it built
        (its first argument for `__init__`, its result for the class-method loaders).

        `functools.wraps` keeps `__wrapped__`, so diffusers' `inspect.signature(cls.__init__)` (how
        `from_pretrained` learns a pipeline's components) still sees the original signature."""
        watcher = self

        @functools.wraps(original)
        def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(watcher._depth, "value", 0)
            watcher._depth.value = depth + 1
            try:
                result = original(first, *args, **kwargs)
            finally:
                watcher._depth.value = depth
            if depth == 0 and watcher._installed:
                watcher.found(first if builds_first else result)
            return result

        return wrapper

    # -- one pipeline ---------------------------------------------------------------------
    def found(self, pipe: Any) -> None:
        """Enable SRD on a newly built pipeline, or warn and leave it untouched."""
        with self._lock:
            if pipe in self._seen:
                return
            self._seen.add(pipe)
            self._enable(pipe)

    def _enable(self, pipe: Any) -> None:
        from .activation import apply_settings, describe_policy
        from .errors import UnsupportedPipelineError
        from .runtime import session_of

        name = type(pipe).__name__
        try:
            with preserved_random_state():  # the renderer factory draws from the program's streams
                apply_settings(pipe, self.settings)
        except UnsupportedPipelineError as error:
            self.log(f"warning: {name} is not supported, left untouched ({_one_line(error)})")
            return
        except Exception as error:  # the host program must go on without SRD
            self.log(
                f"warning: cannot enable SRD on {name}, left untouched: {type(error).__name__}: {_one_line(error)}"
            )
            return
        self.count += 1
        sharing = [p for p in session_of(pipe).pipes if p is not pipe]
        shared = f"; shares its transformer and scheduler with {_names(sharing)} (one setup)" if sharing else ""
        self.log(
            f"SRD on {name} #{self.count}: renderer {self.settings.renderer_label()}, "
            f"policy {describe_policy(self.settings)}{shared}"
        )


def watched_classes() -> list[type]:
    """Classes whose `__init__` is watched: from `srd_pipeline_classes`, and diffusers classes named
    by `srd_supported_pipelines`."""
    import diffusers

    from .manager import get_plugin_manager, supported_pipelines

    classes: list[type] = []
    for result in get_plugin_manager().hook.srd_pipeline_classes():
        classes.extend(result or [])
    for name in supported_pipelines():
        cls = getattr(diffusers, name, None)
        if isinstance(cls, type):
            classes.append(cls)
    return list(dict.fromkeys(classes))


@contextlib.contextmanager
def watching(settings: Settings, log: Callable[[str], None] = report) -> Iterator[PipelineWatcher]:
    """Enable SRD on every pipeline built inside the block; everything is restored after it."""
    watcher = PipelineWatcher(settings, log)
    try:
        with preserved_random_state():  # importing plugins runs their module code
            watcher.install()
        yield watcher
    finally:
        watcher.uninstall()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# -- entry point ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """The `srd-run` console script. Exit status 2 for bad usage or settings, else the program's."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE + "\n\n" + __doc__.split("\n\n")[2], file=sys.stderr)
        return 0
    try:
        config_file, program = parse_arguments(argv)
        with preserved_random_state():  # a renderer factory's module is imported to check it
            # the program's folder is not on sys.path yet: the settings look for a factory there first
            settings = load_settings(config_file, default_enabled=True, program_folder=program_folder(program))
    except ValueError as error:
        report(f"error: {error}\n{USAGE}")
        return 2
    if not settings.enabled:
        report(f"SRD is off ({settings.origins.get('enable', 'enable')}); running the program untouched")
        run_program(program)
        return 0
    with watching(settings):
        run_program(program)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _names(pipes: list[Any]) -> str:
    return ", ".join(type(p).__name__ for p in pipes)
