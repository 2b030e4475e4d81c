"""Settings for drop-in activation: a TOML file and `SRD_*` environment variables.

Operations turn SRD on and off without touching the host code: `srd_plugin.activate(pipe)`
and the `srd-run` launcher read their settings here. Four sources, highest first:

    explicit arguments  >  environment (SRD_*)  >  config file  >  SRDConfig defaults

The config file is the one an argument names (`activate(pipe, config_file=...)`, `srd-run
--config FILE`), else the one `SRD_CONFIG` names. Its `[srd]` table holds `enable`,
`renderer`, `trace_dir` and every `SRDConfig` field; a field whose type is a dataclass is a
sub-table (`[srd.teacache]`), and a sub-table's keys merge key by key across sources.
Environment variables are `SRD_<KEY>` (`SRD_THRESHOLD=0.02`); a sub-table key is
`SRD_<FIELD>__<KEY>` (`SRD_TEACACHE__THRESHOLD=0.2`); structured values (tables, arrays)
are JSON; `none` sets an optional value to None; an empty variable counts as unset.

The readers know no field by name: they follow `dataclasses.fields` and the type hints of
the target dataclass (int, float, bool, str, Literal, Optional, dict, list / tuple, nested
dataclass), so a field added to `SRDConfig` is readable from both sources without a change
here. Each value is checked against its hint where it is read, and the dataclass's own
validation runs on the merged result. Every error is a `ValueError` that names the key and
where it came from (the file and its dotted key, the variable, or the argument), raised
before any model is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters.base import _REPO_ID
from .config import SRDConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TABLE = "srd"
ENV_PREFIX = "SRD_"
ENV_NESTED = "__"
CONFIG_VARIABLE = "SRD_CONFIG"

#: keys that steer activation rather than the run: they are read from every source beside the
#: SRDConfig fields, but are not SRDConfig fields themselves
ACTIVATION_KEYS: dict[str, Any] = {"enable": bool, "renderer": str, "trace_dir": str}

_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")
_INTEGER = re.compile(r"[+-]?\d+")
#: "package.module:function", the entry-point notation, for a renderer built in code
RENDERER_FACTORY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Given:
    """One value from one source, with where it came from (for error messages)."""

    value: Any
    origin: str
    #: the folder relative paths in this value are relative to (a config file's folder)
    base: Path | None = None


class Table(dict):
    """The keys given for a dataclass-typed field (a sub-table); merged key by key across sources."""


@dataclass(frozen=True)
class Settings:
    """The merged activation settings: whether SRD runs, with which renderer, and how.

    enabled: the flag (`enable` key, `SRD_ENABLE`, or an argument).
    renderer: when enabled, an existing path (made absolute), a hub repo id, a
        "package.module:function" factory (`renderer_is_factory`), or a module given as an
        argument; None when SRD is off.
    factory_folders: where a factory's module is looked for before the Python path: the
        program's folder (what `python script.py` puts first on `sys.path`; given by `srd-run`)
        and, for a factory named in a config file, that file's folder.
    config: the merged `SRDConfig`.
    trace_dir: when enabled, the folder every call's trace JSON is written to (or None).
    origins: where each key that some source set came from.
    """

    enabled: bool
    config: SRDConfig
    renderer: Any = None
    renderer_is_factory: bool = False
    factory_folders: tuple[Path, ...] = ()
    trace_dir: Path | None = None
    origins: Mapping[str, str] = field(default_factory=dict)

    def make_renderer(self) -> Any:
        """What to pass to `enable` as the renderer: a fresh module from a factory, else the value."""
        if self.renderer_is_factory:
            factory = load_factory(self.renderer, self.origins.get("renderer", "renderer"), self.factory_folders)
            with _importable_from(self.factory_folders):  # the factory may import its neighbours when called
                return factory()
        return self.renderer

    def renderer_label(self) -> str:
        if isinstance(self.renderer, (str, os.PathLike)):
            return os.fspath(self.renderer)
        return type(self.renderer).__name__


# -- public readers ------------------------------------------------------------------------
def load_settings(
    config_file: str | os.PathLike | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_enabled: bool = False,
    program_folder: str | os.PathLike | None = None,
    **arguments: Any,
) -> Settings:
    """Merge arguments, environment, config file and defaults (in that order) into `Settings`.

    `config_file` (else `SRD_CONFIG`) names the file; `environ` defaults to `os.environ`;
    `arguments` are `enable`, `renderer`, `trace_dir` and `SRDConfig` fields. `default_enabled`
    is the flag when no source sets it (`activate`: off; `srd-run`: on, running the launcher
    being an opt-in itself). When SRD is enabled the renderer must be set and must exist (a
    path), look like a hub repo id, or name an importable factory. A factory's module is looked
    for in `program_folder` (the folder the program's own imports start from, which `srd-run`
    passes because it reads the settings before the program runs), then in the folder of the
    config file that names it, then on `sys.path`.
    """
    environ = os.environ if environ is None else environ
    merged = _merged_layers(SRDConfig, config_file, environ, arguments, use_config_variable=True)
    activation = {key: merged.pop(key) for key in ACTIVATION_KEYS if key in merged}
    config = _build(SRDConfig, merged)
    origins = {key: given.origin for key, given in {**merged, **activation}.items()}
    enable = activation.get("enable")
    enabled = enable.value if enable is not None else default_enabled
    if not enabled:
        return Settings(enabled=False, config=config, origins=origins)
    renderer, is_factory, folders = _resolve_renderer(activation.get("renderer"), enable, program_folder)
    trace_dir = _resolve_path(activation["trace_dir"]) if "trace_dir" in activation else None
    return Settings(
        enabled=True,
        config=config,
        renderer=renderer,
        renderer_is_factory=is_factory,
        factory_folders=folders,
        trace_dir=trace_dir,
        origins=origins,
    )


def read_config(
    cls: type = SRDConfig,
    *,
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    arguments: Mapping[str, Any] | None = None,
    use_config_variable: bool = False,
) -> Any:
    """Build dataclass `cls` from arguments > `environ` > config file > defaults.

    Activation keys (`enable`, `renderer`, `trace_dir`) are accepted and type-checked in
    every source but not part of the result. `environ=None` reads no variables (pass
    `os.environ` for the process environment). The file is `config_file`, else (with
    `use_config_variable`) the one `SRD_CONFIG` names.
    """
    merged = _merged_layers(cls, config_file, environ or {}, arguments or {}, use_config_variable)
    for key in ACTIVATION_KEYS:
        merged.pop(key, None)
    return _build(cls, merged)


def config_from_file(path: str | os.PathLike, cls: type = SRDConfig) -> Any:
    """`SRDConfig.from_file`: the `[srd]` table of a TOML file over the defaults."""
    return read_config(cls, config_file=path)


def config_from_env(environ: Mapping[str, str] | None = None, cls: type = SRDConfig) -> Any:
    """`SRDConfig.from_env`: the `SRD_*` variables over the file `SRD_CONFIG` names, over the defaults."""
    return read_config(cls, environ=os.environ if environ is None else environ, use_config_variable=True)


def load_factory(spec: str, origin: str, folders: Sequence[Path] = ()) -> Callable[[], Any]:
    """Import "package.module:function" and return the function (a ValueError naming `origin` if it cannot).

    The module is looked for in `folders` first, then on `sys.path`, as the program's own
    `import` would find a module next to it; `sys.path` is put back afterwards.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        with _importable_from(folders):
            target: Any = importlib.import_module(module_name)
    except ImportError as error:
        missing = isinstance(error, ModuleNotFoundError) and error.name is not None
        if missing and (module_name == error.name or module_name.startswith(f"{error.name}.")):
            places = ", ".join(repr(str(folder)) for folder in folders)
            where = f"{places}, then on the Python path (sys.path)" if places else "on the Python path (sys.path)"
            raise ValueError(
                f"{origin}: cannot import {module_name!r} for the renderer factory {spec!r}: no module "
                f"{error.name!r} in {where}; put it next to the program or the config file, or add its "
                "folder to PYTHONPATH"
            ) from error
        raise ValueError(
            f"{origin}: cannot import {module_name!r} for the renderer factory {spec!r} ({error})"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{origin}: {module_name!r} has no {attribute!r} (renderer factory {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{origin}: the renderer factory {spec!r} is not callable")
    return target


@contextlib.contextmanager
def _importable_from(folders: Sequence[Path]) -> Iterator[None]:
    """Put `folders` in front of `sys.path` for the block (in order), and take them out again."""
    entries = [str(folder) for folder in folders]
    sys.path[:0] = entries
    try:
        yield
    finally:
        for entry in entries:
            if entry in sys.path:
                sys.path.remove(entry)


# -- the sources ---------------------------------------------------------------------------
def _merged_layers(
    cls: type,
    config_file: str | os.PathLike | None,
    environ: Mapping[str, str],
    arguments: Mapping[str, Any],
    use_config_variable: bool,
) -> dict[str, Given]:
    hints = {**ACTIVATION_KEYS, **field_hints(cls)}
    layers = []
    if config_file is not None:
        layers.append(read_file_layer(config_file, hints))
    elif use_config_variable and environ.get(CONFIG_VARIABLE):
        layers.append(read_file_layer(environ[CONFIG_VARIABLE], hints, named_by=CONFIG_VARIABLE))
    layers.append(read_environ_layer(environ, hints))
    layers.append(_argument_layer(arguments, hints))
    merged: dict[str, Given] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    return merged


def read_file_layer(path: str | os.PathLike, hints: Mapping[str, Any], named_by: str = "") -> dict[str, Given]:
    """The `[srd]` table of a TOML file, each value checked against its hint."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        by = f" (named by {named_by})" if named_by else ""
        raise ValueError(f"config file {str(path)!r}{by} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid TOML file ({error})") from error
    stray = sorted(key for key in data if key in hints)
    if stray:
        raise ValueError(f"{path}: key(s) {', '.join(stray)} are outside the [{TABLE}] table; put them under [{TABLE}]")
    table = data.get(TABLE)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [{TABLE}] table; put the SRD settings under a [{TABLE}] header")
    base = path.resolve().parent
    return _layer(table, hints, lambda key: f"{path}: {TABLE}.{key}", base)


def read_environ_layer(environ: Mapping[str, str], hints: Mapping[str, Any]) -> dict[str, Given]:
    """Every `SRD_*` variable (except `SRD_CONFIG`), parsed by the hint of the key it names."""
    layer: dict[str, Given] = {}
    known = _variable_names(hints)
    # shorter names first, so SRD_TEACACHE (a JSON table) lies under SRD_TEACACHE__THRESHOLD
    names = sorted((n for n in environ if n.startswith(ENV_PREFIX) and n != CONFIG_VARIABLE), key=len)
    for name in names:
        text = environ[name]
        if text == "":
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        key = path[0]
        if key not in hints or (len(path) > 1 and _dataclass_in(hints[key]) is None):
            raise ValueError(
                f"{name} is not an SRD setting{_suggest(name, known)}; known variables: {', '.join(known)}"
            )
        if len(path) == 1:
            layer = _merge(layer, {key: Given(_parse_text(text, hints[key], name), name)})
        else:
            layer = _merge(layer, {key: Given(_nested_table(path[1:], text, _dataclass_in(hints[key]), name), name)})
    return layer


def _nested_table(path: list[str], text: str, cls: type, name: str) -> Table:
    hints = field_hints(cls)
    key = path[0]
    if key not in hints or (len(path) > 1 and _dataclass_in(hints[key]) is None):
        prefix = name.rsplit(ENV_NESTED, len(path))[0]
        known = [f"{prefix}{ENV_NESTED}{k.upper()}" for k in hints]
        raise ValueError(
            f"{name} is not an SRD setting{_suggest(name, known)}: {cls.__name__} has no {key!r}; "
            f"known: {', '.join(known)}"
        )
    if len(path) == 1:
        return Table({key: Given(_parse_text(text, hints[key], name), name)})
    return Table({key: Given(_nested_table(path[1:], text, _dataclass_in(hints[key]), name), name)})


def _argument_layer(arguments: Mapping[str, Any], hints: Mapping[str, Any]) -> dict[str, Given]:
    """Arguments are Python values: SRDConfig checks its fields, `enable` checks the renderer."""
    unknown = sorted(set(arguments) - set(hints))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(hints)}")
    for key, expected, ok in (("enable", "True or False", bool), ("trace_dir", "a folder path", (str, os.PathLike))):
        if key in arguments and not isinstance(arguments[key], ok):
            raise ValueError(f"argument {key}: expected {expected}, got {arguments[key]!r}")
    return {key: Given(value, f"argument {key}") for key, value in arguments.items()}


def _variable_names(hints: Mapping[str, Any]) -> list[str]:
    return [CONFIG_VARIABLE] + [ENV_PREFIX + key.upper() for key in hints]


# -- merging and building ------------------------------------------------------------------
def _merge(lower: Mapping[str, Given], upper: Mapping[str, Given]) -> dict[str, Given]:
    """`upper` wins key by key; two sub-tables merge recursively."""
    merged = dict(lower)
    for key, given in upper.items():
        below = merged.get(key)
        if below is not None and isinstance(below.value, Table) and isinstance(given.value, Table):
            given = Given(Table(_merge(below.value, given.value)), given.origin, given.base)
        merged[key] = given
    return merged


def _build(cls: type, layer: Mapping[str, Given]) -> Any:
    hints = field_hints(cls)
    kwargs = {}
    for key, given in layer.items():
        value = given.value
        if isinstance(value, Table):
            value = _build(_dataclass_in(hints[key]), value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{error} ({_blame(error, layer)})") from error


def _blame(error: Exception, layer: Mapping[str, Given]) -> str:
    """The sources of the keys an error message names (all given keys if it names none)."""
    text = str(error)
    named = [given.origin for key, given in layer.items() if re.search(rf"\b{re.escape(key)}\b", text)]
    origins = named or [given.origin for given in layer.values()]
    return "set by " + "; ".join(origins) if origins else "with the default settings"


def _resolve_renderer(
    given: Given | None, enable: Given | None, program_folder: str | os.PathLike | None
) -> tuple[Any, bool, tuple[Path, ...]]:
    if given is None:
        by = f" by {enable.origin}" if enable is not None else ""
        raise ValueError(
            f"SRD is enabled{by} but no renderer is set: set `renderer` under [{TABLE}] in the config file, "
            "SRD_RENDERER in the environment, or pass renderer="
        )
    value = given.value
    if not isinstance(value, (str, os.PathLike)):
        return value, False, ()  # a module passed as an argument; `enable` checks it
    text = os.path.expanduser(os.fspath(value))
    path = _resolve_path(Given(text, given.origin, given.base))
    if path.exists():
        return str(path), False, ()
    if RENDERER_FACTORY.fullmatch(text):
        candidates = [Path(program_folder).absolute() if program_folder is not None else None, given.base]
        folders = tuple(dict.fromkeys(folder for folder in candidates if folder is not None))
        load_factory(text, given.origin, folders)
        return text, True, folders
    if _REPO_ID.match(text) and not text.startswith("."):
        return text, False, ()  # a hub repo id: loaded (or refused) by `enable`
    where = " (a relative path in a config file is relative to the file's folder)" if given.base else ""
    raise ValueError(
        f"{given.origin}: renderer path {str(path)!r} does not exist{where}; give an existing folder (a "
        "pipeline folder or its transformer subfolder), a hub repo id such as 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', "
        "or 'package.module:function' returning the renderer module"
    )


def _resolve_path(given: Given) -> Path:
    path = Path(os.path.expanduser(os.fspath(given.value)))
    if not path.is_absolute() and given.base is not None:
        path = given.base / path
    return path.absolute()


# -- types ---------------------------------------------------------------------------------
def field_hints(cls: type) -> dict[str, Any]:
    """The init fields of dataclass `cls` with their resolved type hints.

    A field whose metadata says `from_text=False` (an object only code can build, such as
    `SRDConfig.parallel_config`) is left out: files and variables cannot set it.
    """
    try:
        hints = typing.get_type_hints(cls)
    except NameError as error:
        raise TypeError(
            f"cannot resolve the type hints of {cls.__name__} ({error}); import the types its fields use at "
            "module level, not only under TYPE_CHECKING"
        ) from error
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.metadata.get("from_text", True)}


def _options(hint: Any) -> tuple[bool, tuple[Any, ...]]:
    """(whether None is allowed, the other types) of a hint; `X | None` -> (True, (X,))."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = tuple(arg for arg in args if arg is not type(None))
        return len(rest) < len(args), rest
    return hint is type(None), (hint,)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), else None."""
    for option in _options(hint)[1]:
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option
    return None


def _layer(
    mapping: Mapping[str, Any], hints: Mapping[str, Any], where: Callable[[str], str], base: Path | None = None
) -> dict[str, Given]:
    layer = {}
    for key, value in mapping.items():
        origin = where(key)
        if key not in hints:
            known = list(hints)
            raise ValueError(f"{origin}: unknown key{_suggest(key, known)}; known keys: {', '.join(known)}")
        layer[key] = Given(_coerce(value, hints[key], origin), origin, base)
    return layer


class _Mismatch(Exception):
    """A value does not fit one alternative of a union; the next one is tried."""


def _coerce(value: Any, hint: Any, origin: str) -> Any:
    """Check a typed value (from TOML or JSON) against a hint; ints widen to float, tables become `Table`."""
    if hint is Any:
        return value
    optional, options = _options(hint)
    if value is None and optional:
        return None
    for option in options:
        try:
            return _coerce_one(value, option, origin)
        except _Mismatch:
            continue
    raise ValueError(f"{origin}: expected {_describe(hint)}, got {_show(value)}")


def _coerce_one(value: Any, hint: Any, origin: str) -> Any:
    container = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if container is typing.Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return value
        raise _Mismatch
    if _dataclass_in(hint) is not None and isinstance(value, Mapping):
        return Table(_layer(value, field_hints(hint), lambda key: f"{origin}.{key}"))
    if container in (dict, Mapping) and isinstance(value, Mapping):
        value_hint = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, value_hint, f"{origin}.{k}") for k, v in value.items()}
    if container in (list, tuple) and isinstance(value, (list, tuple)):
        return _coerce_sequence(value, container, args, origin)
    if container in (Path, os.PathLike) and isinstance(value, str):
        return Path(value)
    raise _Mismatch


def _coerce_sequence(value: list | tuple, container: type, args: tuple, origin: str) -> list | tuple:
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _Mismatch
        items = [_coerce(v, a, f"{origin}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    else:
        item_hint = args[0] if args else Any
        items = [_coerce(v, item_hint, f"{origin}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if container is tuple else items


def _parse_text(text: str, hint: Any, name: str) -> Any:
    """Parse an environment variable's text by the hint of the key it names."""
    text = text.strip()
    optional, options = _options(hint)
    if optional and text.lower() == "none":
        return None
    for option in options:
        try:
            return _parse_one(text, option, name)
        except _Mismatch:
            continue
    expected = _describe(hint) + (" or none" if optional else "")
    raise ValueError(f"{name}={text!r}: expected {expected}")


def _parse_one(text: str, hint: Any, name: str) -> Any:
    container = typing.get_origin(hint) or hint
    if hint is Any or hint is str:
        return text
    if hint is bool:
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        raise _Mismatch
    if hint is int:
        if _INTEGER.fullmatch(text):
            return int(text)
        raise _Mismatch
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise _Mismatch from None
    if container is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == text:
                return choice
        raise _Mismatch
    if container in (Path, os.PathLike):
        return Path(text)
    if _dataclass_in(hint) is not None or container in (dict, Mapping, list, tuple):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise _Mismatch from None
        return _coerce_one(value, hint, name)
    raise _Mismatch


def _describe(hint: Any) -> str:
    _, options = _options(hint)
    return " or ".join(_describe_one(option) for option in options)


def _describe_one(hint: Any) -> str:
    container = typing.get_origin(hint) or hint
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if container is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    if _dataclass_in(hint) is not None:
        return f"a table of {hint.__name__} settings (JSON in a variable)"
    if container in (dict, Mapping):
        return "a table (JSON in a variable)"
    if container in (list, tuple):
        return "an array (JSON in a variable)"
    if container in (Path, os.PathLike):
        return "a path"
    return f"a {getattr(hint, '__name__', hint)} (not settable from a file or the environment)"


def _show(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
