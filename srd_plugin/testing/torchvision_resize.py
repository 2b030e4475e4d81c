"""torchvision's tensor `resize` (NEAREST), for diffusers' Cosmos transformer where torchvision cannot import.

`CosmosTransformer3DModel.forward` resizes its padding mask with
`torchvision.transforms.functional.resize(mask, size, interpolation=InterpolationMode.NEAREST)`
and imports torchvision only if it is available; the torchvision wheel on PyPI does not import
with the CPU build of torch used here, so the name is simply missing and every forward raises
NameError. `install()` gives that module the exact code path torchvision runs for a tensor with
NEAREST (`torchvision/transforms/_functional_tensor.py: resize`): cast to float32 unless the
tensor is float32/float64, add a batch axis below 4-D, `torch.nn.functional.interpolate(mode="nearest")`,
cast back. Nothing of the model's own arithmetic is replaced, and where torchvision does import
nothing is installed at all.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class _InterpolationMode:
    NEAREST = "nearest"


def resize(
    image: torch.Tensor, size: list[int], interpolation: str = _InterpolationMode.NEAREST, **_: object
) -> torch.Tensor:
    """torchvision.transforms.functional.resize for a tensor with NEAREST interpolation."""
    if interpolation != _InterpolationMode.NEAREST:
        raise NotImplementedError(f"only NEAREST resizing is reproduced here, not {interpolation!r}")
    dtype, squeeze = image.dtype, image.ndim < 4
    work = image.unsqueeze(0) if squeeze else image
    if dtype not in (torch.float32, torch.float64):
        work = work.to(torch.float32)
    work = torch.nn.functional.interpolate(work, size=list(size), mode="nearest")
    if squeeze:
        work = work.squeeze(0)
    return work.to(dtype) if work.dtype != dtype else work


def install() -> bool:
    """Give diffusers' Cosmos transformer module a `transforms` namespace if it has none; True if installed."""
    from diffusers.models.transformers import transformer_cosmos

    if hasattr(transformer_cosmos, "transforms"):
        return False
    transformer_cosmos.transforms = SimpleNamespace(
        functional=SimpleNamespace(resize=resize), InterpolationMode=_InterpolationMode
    )
    return True
