"""`srd doctor`: what this machine offers and what the plugin found, with one verdict line.

A finding is either fine, optional-and-missing (a note, not a failure), or a problem that
keeps SRD from working at all. Only problems make the verdict "not ready" (exit status 1).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manager import BUILTIN_PLUGINS

MIN_DIFFUSERS = "0.42"


@dataclass
class Finding:
    """One line of the report. `problem` findings make the verdict fail; `note` is advice."""

    name: str
    value: str
    problem: bool = False
    note: str = ""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _optional(name: str, module: str, distribution: str, missing_note: str) -> Finding:
    if importlib.util.find_spec(module) is None:
        return Finding(name, "not installed", note=missing_note)
    return Finding(name, _version(distribution) or "installed (version unknown)")


def environment() -> list[Finding]:
    """Python, the libraries SRD runs on, the accelerator, the optional kernels."""
    from . import __version__

    findings = [
        Finding("srd-plugin", f"{__version__} ({Path(__file__).resolve().parent})"),
        Finding("python", f"{platform.python_version()} ({sys.executable})"),
    ]
    try:
        import torch
    except ImportError as error:
        return [*findings, Finding("torch", f"cannot be imported: {error}", problem=True)]
    findings.append(Finding("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})"))
    findings.append(_diffusers())
    findings.append(Finding("transformers", _version("transformers") or "not installed"))
    findings.extend(_devices(torch))
    findings.append(_ffmpeg())
    findings.append(
        _optional("matplotlib", "matplotlib", "matplotlib", 'report pictures need it: pip install "srd-plugin[plot]"')
    )
    findings.append(_optional("triton", "triton", "triton", "optional: GPU kernels (SageAttention) need it"))
    findings.append(
        _optional("sageattention", "sageattention", "sageattention", "optional: 8-bit attention kernels on CUDA")
    )
    findings.append(_sage_option(torch))
    return findings


def _sage_option(torch: Any) -> Finding:
    """What `srd generate --sage` (SRDConfig.sage_attention) would do on this machine."""
    from .hooks.sageattention import SAGE_HEAD_DIMS, sageattention_kernel

    reasons = []
    if sageattention_kernel() is None:
        reasons.append("sageattention cannot be imported")
    if not torch.cuda.is_available():
        reasons.append("no CUDA device")
    if reasons:
        return Finding("generate --sage", f"would fall back to SDPA everywhere: {', '.join(reasons)}")
    dims = "/".join(map(str, SAGE_HEAD_DIMS))
    return Finding(
        "generate --sage",
        f"SageAttention for fp16/bf16 attention on CUDA with head dim {dims} (Wan, CogVideoX); SDPA elsewhere, "
        "with a warning why",
    )


def _diffusers() -> Finding:
    from packaging.version import Version

    version = _version("diffusers")
    if version is None:
        return Finding("diffusers", "not installed", problem=True, note=f"pip install 'diffusers>={MIN_DIFFUSERS}'")
    if Version(version) < Version(MIN_DIFFUSERS):
        return Finding("diffusers", version, problem=True, note=f"SRD needs diffusers>={MIN_DIFFUSERS}")
    return Finding("diffusers", version)


def _devices(torch: Any) -> list[Finding]:
    if not torch.cuda.is_available():
        return [Finding("CUDA device", "none", note="CPU only: fine for `srd demo`, far too slow for real weights")]
    findings = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        findings.append(
            Finding(
                f"cuda:{index}",
                f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
                f"compute capability {properties.major}.{properties.minor}",
            )
        )
    return findings


def _ffmpeg() -> Finding:
    try:
        import imageio_ffmpeg

        return Finding("ffmpeg", imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as error:
        return Finding("ffmpeg", f"unavailable: {error}", problem=True, note="videos cannot be written")


def plugins(manager: Any = None) -> list[Finding]:
    """Every registered plugin: where it comes from and what it serves (adapters) or hooks into."""
    if manager is None:
        from .manager import get_plugin_manager

        try:
            manager = get_plugin_manager()
        except Exception as error:  # an entry-point plugin that fails to import lands here
            return [Finding("plugins", f"could not be loaded: {type(error).__name__}: {error}", problem=True)]
    supported = {
        impl.plugin_name: sorted(impl.function() or []) for impl in manager.hook.srd_supported_pipelines.get_hookimpls()
    }
    distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    findings = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = distributions.get(id(plugin))
        if name in BUILTIN_PLUGINS:
            origin = "built-in"
        elif dist is not None:
            origin = f"entry point of {dist.project_name} {dist.version}"
        else:
            origin = "registered at run time"
        if name in supported:
            what = f"adapter for {', '.join(supported[name]) or 'no pipeline'}"
        else:
            hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
            what = f"hooks {', '.join(hooks)}"
        findings.append(Finding(name, f"{origin}; {what}"))
    if not any(supported.values()):
        findings.append(Finding("adapters", "none registered", problem=True, note="reinstall srd-plugin"))
    return findings


def verdict(findings: list[Finding]) -> tuple[bool, str]:
    """(usable, one line saying so and why)."""
    problems = [f for f in findings if f.problem]
    if problems:
        names = ", ".join(f.name for f in problems)
        return False, f"NOT READY: fix {names} (see the lines marked !!)"
    devices = [f.value.split(",")[0] for f in findings if f.name.startswith("cuda:")]
    if devices:
        return True, f"READY: SRD can run on {len(devices)} CUDA device(s) ({', '.join(devices)})"
    return True, "READY (CPU only): `srd demo` and the tests run here; real weights need a CUDA GPU"


def run_doctor(log: Callable[[str], None]) -> int:
    """Print the report; 0 when SRD is usable here, 1 otherwise."""
    sections = (("machine", environment()), ("plugins", plugins()))
    findings: list[Finding] = []
    for title, section in sections:
        log(f"{title}:")
        width = max(len(f.name) for f in section)
        for finding in section:
            mark = "!!" if finding.problem else "  "
            note = f"  ({finding.note})" if finding.note else ""
            log(f"{mark} {finding.name:<{width}}  {finding.value}{note}")
        findings.extend(section)
    usable, line = verdict(findings)
    log(line)
    return 0 if usable else 1
