"""Config file and SRD_* environment readers: round trips, precedence, and every error path.

Each error must be a ValueError naming the key and its source (file path and dotted key,
variable name, or argument), raised before anything is touched.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srd_plugin import SRDConfig
from srd_plugin.config import RENDERER_DTYPES, RENDERER_FAILURE_MODES, SWITCH_POLICIES
from srd_plugin.settings import field_hints, load_settings, read_config
from srd_plugin.testing import tiny_wan_renderer

FACTORY = "srd_plugin.testing:tiny_wan_renderer"
SCRATCH = Path(tempfile.mkdtemp(prefix="srd-settings-"))  # hypothesis examples reuse one folder
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters as \\uXXXX escapes."""
    escaped = (f"\\u{ord(c):04x}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return '"' + "".join(escaped) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_toml(values: dict, name: str = "srd.toml", tables: dict | None = None, folder: Path = SCRATCH) -> Path:
    lines = ["[srd]"] + [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    for table, entries in (tables or {}).items():
        lines += [f"[{table}]"] + [f"{key} = {toml_value(value)}" for key, value in entries.items()]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


@st.composite
def valid_configs(draw) -> SRDConfig:
    switch = draw(st.sampled_from(SWITCH_POLICIES))
    min_steps = draw(st.integers(1, 20))
    values = dict(
        switch=switch,
        threshold=draw(st.floats(1e-4, 1.0)),
        min_sketch_steps=min_steps,
        max_sketch_steps=draw(st.none() | st.integers(min_steps, 60)),
        move_renderer=draw(st.booleans()),
        renderer_dtype=draw(st.none() | st.sampled_from(RENDERER_DTYPES)),
        on_renderer_failure=draw(st.sampled_from(RENDERER_FAILURE_MODES)),
    )
    if switch == "step":
        values["switch_step"] = draw(st.integers(0, 60))
    if switch == "ratio":
        values["switch_ratio"] = draw(st.floats(0.0, 1.0))
    if switch == "boundary":
        values["boundary_ratio"] = draw(st.floats(0.0, 1.0))
    return SRDConfig(**values)


def env_text(value, draw) -> str:
    if value is None:
        return draw(st.sampled_from(["none", "None", "NONE"]))
    if isinstance(value, bool):
        words = ["1", "true", "True", "yes", "on"] if value else ["0", "false", "FALSE", "no", "off"]
        return draw(st.sampled_from(words))
    return str(value)


# -- round trips -----------------------------------------------------------------------------
@EXAMPLES
@given(config=valid_configs())
def test_file_round_trip(config):
    path = write_toml(config.to_dict())
    assert SRDConfig.from_file(path) == config


@EXAMPLES
@given(config=valid_configs(), data=st.data())
def test_environment_round_trip(config, data):
    readable = field_hints(SRDConfig)
    environ = {
        f"SRD_{key.upper()}": env_text(value, data.draw) for key, value in config.to_dict().items() if key in readable
    }
    assert SRDConfig.from_env(environ) == config


def test_empty_sources_give_the_defaults():
    assert SRDConfig.from_env({}) == SRDConfig()
    assert SRDConfig.from_file(write_toml({})) == SRDConfig()
    assert load_settings(environ={}) == load_settings(environ={"SRD_THRESHOLD": ""})  # empty = unset
    assert load_settings(environ={}).enabled is False


def test_from_env_reads_the_file_srd_config_names():
    path = write_toml({"threshold": 0.03, "min_sketch_steps": 2})
    config = SRDConfig.from_env({"SRD_CONFIG": str(path), "SRD_MIN_SKETCH_STEPS": "3"})
    assert (config.threshold, config.min_sketch_steps) == (0.03, 3)


# -- precedence: arguments > environment > file > defaults -----------------------------------
SOURCES = ("file", "env", "argument")
PRECEDENCE_FIELDS = {
    "threshold": st.floats(1e-4, 1.0),
    "min_sketch_steps": st.integers(1, 30),
    "move_renderer": st.booleans(),
    "renderer_dtype": st.sampled_from(RENDERER_DTYPES),
    "on_renderer_failure": st.sampled_from(RENDERER_FAILURE_MODES),
}


@EXAMPLES
@given(data=st.data())
def test_precedence_of_every_source(data):
    given_by: dict[str, dict[str, object]] = {}  # key -> {source: value}
    for key, values in PRECEDENCE_FIELDS.items():
        sources = data.draw(st.lists(st.sampled_from(SOURCES), unique=True), label=f"sources of {key}")
        given_by[key] = {source: data.draw(values, label=f"{key} from {source}") for source in sources}
    file_values = {key: by["file"] for key, by in given_by.items() if "file" in by}
    environ = {f"SRD_{key.upper()}": env_text(by["env"], data.draw) for key, by in given_by.items() if "env" in by}
    arguments = {key: by["argument"] for key, by in given_by.items() if "argument" in by}
    expected = SRDConfig().to_dict()
    for key, by in given_by.items():
        for source in SOURCES:  # lowest first: a higher source overwrites
            if source in by:
                expected[key] = by[source]
    assert load_settings(write_toml(file_values), environ=environ, **arguments).config.to_dict() == expected


@EXAMPLES
@given(
    enable=st.fixed_dictionaries({}, optional={s: st.booleans() for s in SOURCES}),
    renderer_sources=st.lists(st.sampled_from(SOURCES), min_size=1, unique=True),
)
def test_precedence_of_enable_and_renderer(enable, renderer_sources):
    folders = {source: SCRATCH / f"renderer-from-{source}" for source in SOURCES}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    file_values = {"enable": enable.get("file"), "renderer": "renderer-from-file"}
    if "file" not in renderer_sources:
        file_values.pop("renderer")
    environ = {"SRD_RENDERER": str(folders["env"])} if "env" in renderer_sources else {}
    if "env" in enable:
        environ["SRD_ENABLE"] = "1" if enable["env"] else "0"
    arguments = {"renderer": str(folders["argument"])} if "argument" in renderer_sources else {}
    if "argument" in enable:
        arguments["enable"] = enable["argument"]
    result = load_settings(write_toml(file_values), environ=environ, **arguments)
    expected_enabled = next((enable[s] for s in reversed(SOURCES) if s in enable), False)
    assert result.enabled is expected_enabled
    if expected_enabled:
        winner = next(s for s in reversed(SOURCES) if s in renderer_sources)
        assert result.renderer == str(folders[winner])  # the file's relative path: from the file's folder


def test_config_file_argument_beats_srd_config(tmp_path):
    named = write_toml({"threshold": 0.2}, folder=tmp_path, name="named.toml")
    from_variable = write_toml({"threshold": 0.3}, folder=tmp_path, name="variable.toml")
    assert load_settings(named, environ={"SRD_CONFIG": str(from_variable)}).config.threshold == 0.2
    assert load_settings(environ={"SRD_CONFIG": str(from_variable)}).config.threshold == 0.3


def test_launcher_default_is_on_and_the_flag_turns_it_off():
    assert load_settings(environ={"SRD_RENDERER": FACTORY}, default_enabled=True).enabled
    off = load_settings(environ={"SRD_RENDERER": FACTORY, "SRD_ENABLE": "off"}, default_enabled=True)
    assert not off.enabled and off.renderer is None


# -- renderer and trace folder ----------------------------------------------------------------
def test_renderer_forms(tmp_path):
    (tmp_path / "models" / "small").mkdir(parents=True)
    path = write_toml({"enable": True, "renderer": "models/small", "trace_dir": "traces"}, folder=tmp_path)
    from_file = load_settings(path, environ={})
    assert from_file.renderer == str(tmp_path / "models" / "small")  # relative to the file, made absolute
    assert from_file.trace_dir == tmp_path / "traces"
    hub = load_settings(environ={"SRD_ENABLE": "1", "SRD_RENDERER": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"})
    assert hub.renderer == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and not hub.renderer_is_factory
    factory = load_settings(environ={"SRD_ENABLE": "1", "SRD_RENDERER": FACTORY})
    assert factory.renderer_is_factory and type(factory.make_renderer()).__name__ == "WanTransformer3DModel"
    assert factory.make_renderer() is not factory.make_renderer()  # a fresh module per pipeline


NEIGHBOURLY_FACTORY = """
from srd_plugin.testing import tiny_wan_renderer


def make():
    from {helper} import SEED  # a neighbour imported only when the factory is called

    return tiny_wan_renderer(seed=SEED)
"""


def write_factory(folder: Path, module: str) -> str:
    """A factory module and the helper module it imports when called, side by side in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(NEIGHBOURLY_FACTORY.format(helper=f"{module}_helper"))
    (folder / f"{module}_helper.py").write_text("SEED = 3\n")
    return f"{module}:make"


@pytest.fixture
def forget_factory_modules():
    yield
    for name in [name for name in sys.modules if name.startswith("factory_beside_")]:
        del sys.modules[name]


def test_a_factory_module_is_found_next_to_the_program_or_the_config_file(tmp_path, forget_factory_modules):
    path_before = sys.path[:]
    spec = write_factory(tmp_path / "config", "factory_beside_config")
    config = write_toml({"enable": True, "renderer": spec}, folder=tmp_path / "config")
    from_file = load_settings(config, environ={})
    assert from_file.renderer_is_factory and from_file.factory_folders == (tmp_path / "config",)
    made = from_file.make_renderer()  # its helper, imported at this call, comes from the same folder
    assert torch.equal(next(made.parameters()), next(tiny_wan_renderer(seed=3).parameters()))

    spec = write_factory(tmp_path / "program", "factory_beside_program")
    environ = {"SRD_ENABLE": "1", "SRD_RENDERER": spec}
    from_program = load_settings(environ=environ, program_folder=tmp_path / "program")
    assert from_program.factory_folders == (tmp_path / "program",)
    assert type(from_program.make_renderer()).__name__ == "WanTransformer3DModel"
    assert sys.path == path_before


# -- errors: file ------------------------------------------------------------------------------
def check_error(call, *words):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def test_file_errors(tmp_path):
    def load(text: str, name="srd.toml"):
        path = tmp_path / name
        path.write_text(text)
        return lambda: SRDConfig.from_file(path)

    path = str(tmp_path / "srd.toml")
    check_error(load("[srd]\ntreshold = 0.1\n"), path, "srd.treshold", "unknown key", "did you mean threshold")
    check_error(load("[srd]\nthreshold = 'high'\n"), path, "srd.threshold", "expected a number", "'high'")
    check_error(load("[srd]\nthreshold = 2.0\n"), path, "srd.threshold", "(0, 1]")
    check_error(load("[srd]\nmin_sketch_steps = 2.5\n"), path, "srd.min_sketch_steps", "an integer")
    check_error(load("[srd]\nmove_renderer = 1\n"), path, "srd.move_renderer", "true or false")
    check_error(load("[srd]\nswitch = 'step'\n"), path, "srd.switch", "needs switch_step")
    check_error(load("[srd]\nenable = 'yes'\n"), path, "srd.enable", "true or false")
    check_error(load("[srd.nothing]\nx = 1\n"), path, "srd.nothing", "unknown key")
    check_error(load("[srd]\nthreshold = [0.1]\n"), path, "srd.threshold", "expected a number")
    check_error(load("threshold = 0.1\n"), path, "outside the [srd] table")
    check_error(load("[other]\nx = 1\n"), path, "no [srd] table")
    check_error(load("[srd\n"), path, "not a valid TOML file")
    check_error(lambda: SRDConfig.from_file(tmp_path / "absent.toml"), "absent.toml", "does not exist")
    check_error(
        lambda: SRDConfig.from_env({"SRD_CONFIG": str(tmp_path / "absent.toml")}), "named by SRD_CONFIG", "absent.toml"
    )


WRONG_TOML_VALUES = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(0, 3), max_size=2))


@EXAMPLES
@given(key=st.sampled_from(["threshold", "min_sketch_steps", "max_sketch_steps"]), value=WRONG_TOML_VALUES)
def test_file_wrong_types_name_key_and_file(key, value):
    path = write_toml({key: value})
    check_error(lambda: SRDConfig.from_file(path), str(path), f"srd.{key}", "expected")


def test_missing_renderer_path_from_file_names_key_and_file(tmp_path):
    path = write_toml({"enable": True, "renderer": "./models/absent"}, folder=tmp_path)
    check_error(lambda: load_settings(path, environ={}), f"{path}: srd.renderer", "does not exist", "file's folder")
    # with the flag off the renderer is not needed, so a missing one is not an error
    assert not load_settings(path, environ={"SRD_ENABLE": "0"}).enabled


# -- errors: environment and arguments ---------------------------------------------------------
def test_environment_errors(tmp_path):
    def load(**environ):
        return lambda: load_settings(environ=environ)

    check_error(load(SRD_TRESHOLD="0.1"), "SRD_TRESHOLD", "not an SRD setting", "did you mean SRD_THRESHOLD")
    check_error(load(SRD_THRESHOLD="high"), "SRD_THRESHOLD='high'", "expected a number")
    check_error(load(SRD_THRESHOLD="none"), "SRD_THRESHOLD='none'", "expected a number")
    check_error(load(SRD_THRESHOLD="1.5"), "SRD_THRESHOLD", "(0, 1]")
    check_error(load(SRD_MIN_SKETCH_STEPS="3.0"), "SRD_MIN_SKETCH_STEPS", "an integer")
    check_error(load(SRD_MOVE_RENDERER="maybe"), "SRD_MOVE_RENDERER", "true or false")
    check_error(load(SRD_SWITCH="sometimes"), "SRD_SWITCH", "adaptive")
    check_error(load(SRD_SWITCH_STEP="4"), "SRD_SWITCH_STEP", "only used with switch='step'")
    check_error(load(SRD_SWITCH__X="1"), "SRD_SWITCH__X", "not an SRD setting")
    check_error(load(SRD_ENABLE="1"), "enabled by SRD_ENABLE", "no renderer is set", "SRD_RENDERER")
    absent = str(tmp_path / "absent")
    check_error(load(SRD_ENABLE="1", SRD_RENDERER=absent), "SRD_RENDERER", absent, "does not exist")
    check_error(
        load(SRD_ENABLE="1", SRD_RENDERER="no_such_module:make"),
        "SRD_RENDERER",
        "cannot import 'no_such_module'",
        "no module 'no_such_module' in",
        "on the Python path (sys.path)",
    )
    check_error(
        load(SRD_ENABLE="1", SRD_RENDERER="srd_plugin.no_such_module:make"),
        "no module 'srd_plugin.no_such_module'",
    )
    check_error(load(SRD_ENABLE="1", SRD_RENDERER="srd_plugin.testing:absent"), "SRD_RENDERER", "has no 'absent'")
    check_error(load(SRD_ENABLE="1", SRD_RENDERER="srd_plugin.testing:VOCABULARY"), "SRD_RENDERER", "not callable")
    # a bad setting is reported even with the flag off
    check_error(load(SRD_ENABLE="0", SRD_THRESHOLD="x"), "SRD_THRESHOLD")


PYTHON_READS = {
    "threshold": lambda text: float(text),
    "min_sketch_steps": lambda text: int(text),
    "move_renderer": lambda text: text.strip().lower() in ("1", "true", "yes", "on"),
}


@EXAMPLES
@given(key=st.sampled_from(sorted(PYTHON_READS)), text=st.text(st.characters(codec="ascii"), min_size=1, max_size=6))
def test_environment_garbage_names_the_variable(key, text):
    name = f"SRD_{key.upper()}"
    try:
        value = getattr(SRDConfig.from_env({name: text}), key)
    except ValueError as error:
        assert name in str(error)  # unparsable or out of range: the message names the variable
        return
    assert value == PYTHON_READS[key](text)  # accepted: the value Python itself reads from the text


def test_argument_errors():
    check_error(lambda: load_settings(environ={}, treshold=0.1), "unknown setting", "treshold")
    check_error(lambda: load_settings(environ={}, enable="yes"), "argument enable", "True or False")
    check_error(lambda: load_settings(environ={}, trace_dir=3), "argument trace_dir", "a folder path")
    check_error(lambda: load_settings(environ={}, threshold=3.0), "argument threshold", "(0, 1]")


# -- generic over the dataclass: nested tables, dicts, tuples, literals ------------------------
@dataclass(frozen=True)
class CacheSettings:
    threshold: float = 0.1
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"CacheSettings.threshold={self.threshold!r} is invalid: a number in (0, 1)")


@dataclass(frozen=True)
class HostSettings:
    steps: int = 3
    cache: CacheSettings | None = None
    scheduler_config: dict | None = None
    coefficients: tuple[float, ...] = ()


def read(config_file=None, **environ):
    return read_config(HostSettings, config_file=config_file, environ=environ)


def test_nested_dataclass_is_a_sub_table(tmp_path):
    path = write_toml({"steps": 4}, folder=tmp_path, tables={"srd.cache": {"threshold": 0.5, "mode": "slow"}})
    assert read(path) == HostSettings(steps=4, cache=CacheSettings(0.5, "slow"))
    # the environment overrides one key of the sub-table; the file's other key stays
    assert read(path, SRD_CACHE__THRESHOLD="0.25").cache == CacheSettings(0.25, "slow")
    assert read(path, SRD_CACHE="none").cache is None
    assert read(SRD_CACHE='{"mode": "slow"}').cache == CacheSettings(0.1, "slow")
    assert read(SRD_CACHE__MODE="slow").cache == CacheSettings(0.1, "slow")
    config = read_config(HostSettings, config_file=path, arguments={"cache": None})
    assert config.cache is None  # an argument replaces the whole value


def test_dict_tuple_and_literal_fields(tmp_path):
    path = write_toml(
        {"coefficients": [1, 2.5]}, folder=tmp_path, tables={"srd.scheduler_config": {"shift": 3.0, "name": "x"}}
    )
    config = read(path)
    assert config.scheduler_config == {"shift": 3.0, "name": "x"} and config.coefficients == (1.0, 2.5)
    config = read(SRD_SCHEDULER_CONFIG='{"shift": 5}', SRD_COEFFICIENTS="[0.5]")
    assert config.scheduler_config == {"shift": 5} and config.coefficients == (0.5,)


def test_nested_errors_name_key_and_source(tmp_path):
    path = str(tmp_path / "srd.toml")
    write_toml({}, folder=tmp_path, tables={"srd.cache": {"treshold": 0.5}})
    check_error(lambda: read(path), path, "srd.cache.treshold", "unknown key", "did you mean threshold")
    write_toml({}, folder=tmp_path, tables={"srd.cache": {"threshold": 2.0}})
    check_error(lambda: read(path), "CacheSettings.threshold=2.0", f"set by {path}: srd.cache.threshold")
    write_toml({}, folder=tmp_path, tables={"srd.cache": {"mode": "medium"}})
    check_error(lambda: read(path), "srd.cache.mode", "one of 'fast', 'slow'")
    write_toml({"cache": 0.5}, folder=tmp_path)
    check_error(lambda: read(path), "srd.cache", "a table of CacheSettings settings")
    check_error(lambda: read(SRD_CACHE__TRESHOLD="0.5"), "SRD_CACHE__TRESHOLD", "did you mean SRD_CACHE__THRESHOLD")
    check_error(lambda: read(SRD_CACHE__THRESHOLD="1.5"), "set by SRD_CACHE__THRESHOLD")
    check_error(lambda: read(SRD_CACHE="{bad json"), "SRD_CACHE", "a table of CacheSettings")
    check_error(lambda: read(SRD_CACHE='{"mode": 3}'), "SRD_CACHE.mode", "one of 'fast', 'slow'")
    check_error(lambda: read(SRD_COEFFICIENTS='["a"]'), "SRD_COEFFICIENTS[0]", "a number")
    check_error(lambda: read(SRD_STEPS__X="1"), "SRD_STEPS__X", "not an SRD setting")


def test_readers_follow_srdconfig_fields():
    """Every SRDConfig field with a plain default, present and future, is read from its variable."""
    for field in dataclasses.fields(SRDConfig):
        if not field.metadata.get("from_text", True):
            continue  # objects only code can build (parallel_config)
        default = field.default
        if default is None:
            text = "none"
        elif isinstance(default, bool):
            text = "true" if default else "false"
        elif isinstance(default, (int, float, str)):
            text = str(default)
        else:
            continue
        assert getattr(SRDConfig.from_env({f"SRD_{field.name.upper()}": text}), field.name) == default


def test_code_only_fields_are_refused_from_text():
    with pytest.raises(ValueError, match="SRD_PARALLEL_CONFIG is not an SRD setting"):
        SRDConfig.from_env({"SRD_PARALLEL_CONFIG": "none"})
