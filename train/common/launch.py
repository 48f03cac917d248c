"""ParameterServer options that every entrypoint sets from its config the same way."""

from __future__ import annotations

import inspect

from jaxps import ParameterServer


def ps_options(peer_timeout: float) -> dict:
    """Keyword arguments of ParameterServer for ``--peer-timeout SECONDS`` (0: no watchdog,
    which is the PS's ``peer_timeout=None``; its default is a watchdog of 60 s, so 0 must
    be passed, not left out)."""
    if "peer_timeout" not in inspect.signature(ParameterServer).parameters:
        if peer_timeout:
            raise ValueError("--peer-timeout: this jaxps' ParameterServer has no peer watchdog "
                             "(no peer_timeout argument); pass --peer-timeout 0")
        return {}
    return {"peer_timeout": float(peer_timeout) if peer_timeout else None}
