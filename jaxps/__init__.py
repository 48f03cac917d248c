"""jaxps: embedding tables in an adaptive parameter server over MPI, for JAX training.

Public API only; the implementation lives in ``jaxps._src``.
"""

from ._src.errors import InputError as InputError
from ._src.errors import ProtocolError as ProtocolError
from ._src.handles import Handle as Handle
from ._src.server import ParameterServer as ParameterServer
from ._src.tables import TableSpec as TableSpec
from ._src.techniques import TECHNIQUES as TECHNIQUES
from ._src.techniques import Adaptive as Adaptive
from ._src.techniques import Classic as Classic
from ._src.techniques import Nups as Nups
from ._src.techniques import Relocation as Relocation
from ._src.techniques import Replication as Replication
from ._src.techniques import Technique as Technique

__all__ = ["Adaptive", "Classic", "Handle", "InputError", "Nups", "ParameterServer",
           "ProtocolError", "Relocation", "Replication", "TECHNIQUES", "TableSpec", "Technique"]
