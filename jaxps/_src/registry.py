"""Technique names -> policy objects: the one list of the built-in techniques."""

from __future__ import annotations

from .adaptive import Adaptive
from .errors import InputError
from .lockstep import Lockstep
from .policy import Technique
from .techniques import TECHNIQUES, Classic, Relocation, Replication


def make(technique) -> Technique:
    """The policy object for a technique name (or a Technique instance, returned as is)."""
    if isinstance(technique, Technique):
        return technique
    available = {"classic": Classic, "replication": Replication, "relocation": Relocation,
                 "adaptive": Adaptive, "lockstep": Lockstep}
    if technique in available:
        return available[technique]()
    if technique == "nups":
        raise InputError("technique 'nups' needs its hot set: pass technique=jaxps.Nups("
                         "hot_keys={table: keys}) or jaxps.Nups(access_counts={table: counts}, "
                         "hot_fraction=0.01)")
    raise InputError(f"unknown technique {technique!r}; choose one of {TECHNIQUES} "
                     f"or pass a jaxps technique object such as jaxps.Nups(hot_keys=...)")
