"""Where the jitted step runs: the CPU, or this rank's accelerator (the PS stays on the host).

With several ranks on a host that has accelerators (GPUs), JAX would put every rank's
step on device 0. The trainer instead gives local rank r the device r % n of the host's
n devices, as one rank per GPU expects; on the CPU nothing changes.
"""

from __future__ import annotations

import contextlib

import jax

from .errors import InputError


def step_device(local_rank: int, device=None):
    """The device for a rank's step: ``device`` if given ("cpu", "gpu", ... picks that
    platform's device for this rank, a ``jax.Device`` is taken as is); else, where JAX's
    default backend is an accelerator, ``jax.local_devices()[local_rank % n]``; else None
    (JAX's default, the CPU)."""
    if device is None:
        if jax.default_backend() == "cpu":
            return None
        return share(jax.local_devices(), local_rank)
    if isinstance(device, str):
        try:
            devices = jax.local_devices(backend=device)
        except RuntimeError:
            raise InputError(f"device={device!r}: JAX has no {device!r} devices here (its "
                             f"backend: {jax.default_backend()!r}). For NVIDIA GPUs install "
                             f"jaxps[cuda] and leave JAX_PLATFORMS unset (dev.sh sets it "
                             f"to cpu only where nvidia-smi finds no GPU); or leave device "
                             f"unset") from None
        return share(devices, local_rank)
    if not isinstance(device, jax.Device):
        raise InputError(f"device must be None, a platform name such as 'gpu', or a "
                         f"jax.Device, got {device!r}")
    return device


def share(devices: list, local_rank: int):
    """Local rank r's device among a host's ``devices``: number r % len(devices)."""
    if not devices:
        raise InputError("no JAX devices on this host")
    return devices[local_rank % len(devices)]


def on(device):
    """Context: jitted calls with host (numpy) arguments run on ``device`` (None: JAX's
    default)."""
    return contextlib.nullcontext() if device is None else jax.default_device(device)
