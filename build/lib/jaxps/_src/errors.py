"""Exceptions raised by jaxps. Bad input raises before anything is applied."""


class InputError(ValueError):
    """A call's arguments are invalid (unknown table, key out of range, bad shape, NaN, ...).

    The message names the table and an offending key or position and says how to fix
    the call. Nothing of the call has been applied when this is raised.
    """


class ProtocolError(RuntimeError):
    """An internal invariant of the PS protocol broke: a bug in jaxps, never bad input."""
