"""Keep the program's global random streams as they were around work done on its behalf.

A program that seeds once (`torch.manual_seed`, `numpy.random.seed`, `random.seed`) and then
samples without a `generator` depends on every draw made in between. `srd-run` and `activate`
build a renderer (a factory, whose module-level code and weight initialisation draw from the
global streams; a `from_pretrained`) and call `enable` while the program runs; without this
guard those draws would shift the program's starting noise, even when SRD ends up not running
the renderer at all, or refuses the pipeline.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy
import torch


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run the block, then put back the global torch (CPU and CUDA), numpy and `random` streams.

    CUDA generators are saved only when CUDA is already initialised, so the guard itself never
    initialises CUDA (a program may fork worker processes later). If the block initialises CUDA,
    each device's generator is afterwards reseeded with its own initial seed, which is the state a
    generator has when CUDA starts: the seed the program queued (or torch's default), offset 0.
    The streams are restored when the block raises, too.
    """
    cuda_was_ready = torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda_was_ready else []
    python_state = random.getstate()
    numpy_state = numpy.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)
        if not cuda_was_ready and torch.cuda.is_initialized():
            for generator in torch.cuda.default_generators:
                generator.manual_seed(generator.initial_seed())
