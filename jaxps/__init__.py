"""jaxps: embedding tables in an adaptive parameter server over MPI, for JAX training.

Public API only; the implementation lives in ``jaxps._src``.
"""

from ._src.errors import InputError as InputError
from ._src.errors import ProtocolError as ProtocolError
from ._src.handles import Handle as Handle
from ._src.server import ParameterServer as ParameterServer
from ._src.tables import TableSpec as TableSpec
from ._src.techniques import TECHNIQUES as TECHNIQUES

__all__ = ["Handle", "InputError", "ParameterServer", "ProtocolError", "TECHNIQUES", "TableSpec"]
