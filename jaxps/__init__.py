"""jaxps: embedding tables in an adaptive parameter server over MPI, for JAX training.

Public API only; the implementation lives in ``jaxps._src``. The parameter server itself
needs only numpy and mpi4py; the trainer names (``SparseTrainer``, row optimizers, ...)
import JAX on first use.
"""

from ._src.checkpoint import CheckpointError as CheckpointError
from ._src.checkpoint import list_checkpoints as list_checkpoints
from ._src.checkpoint_load import load_checkpoint as load_checkpoint
from ._src.checkpoint import read_manifest as read_manifest
from ._src.checkpoint import save_checkpoint as save_checkpoint
from ._src.errors import InputError as InputError
from ._src.errors import ProtocolError as ProtocolError
from ._src.handles import Handle as Handle
from ._src.launch import JobExit as JobExit
from ._src.launch import install_abort_hooks as install_abort_hooks
from ._src.launch import run_main as run_main
from ._src.launch import run_on_root as run_on_root
from ._src.server import ParameterServer as ParameterServer
from ._src.stats import delta as stats_delta
from ._src.tables import TableSpec as TableSpec
from ._src.tables import initial_rows as initial_rows
from ._src.adaptive import Adaptive as Adaptive
from ._src.lockstep import Lockstep as Lockstep
from ._src.policy import PolicyView as PolicyView
from ._src.policy import Technique as Technique
from ._src.techniques import TECHNIQUES as TECHNIQUES
from ._src.techniques import Classic as Classic
from ._src.techniques import Nups as Nups
from ._src.techniques import Relocation as Relocation
from ._src.techniques import Replication as Replication

_TRAINER = {"SparseTrainer": "trainer", "Batch": "pipeline", "EpochMetrics": "trainer",
            "index_batch": "pipeline", "bucket_size": "pipeline", "DenseTrainer": "dense",
            "DenseMetrics": "dense", "initial_table": "dense", "RowOptimizer": "row_optim",
            "row_optimizer": "row_optim", "row_adagrad": "row_optim", "row_adam": "row_optim",
            "ROW_OPTIMIZERS": "row_optim", "loss_and_row_deltas": "trainer"}


def __getattr__(name):
    # Lazy: the trainer needs JAX; a PS-only user (or a rank of a non-JAX job) should not
    # pay for importing it.
    if name in _TRAINER:
        import importlib
        module = importlib.import_module(f"jaxps._src.{_TRAINER[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxps' has no attribute {name!r}")


__all__ = ["Adaptive", "Batch", "CheckpointError", "Classic", "DenseMetrics", "DenseTrainer",
           "EpochMetrics", "Handle", "InputError", "JobExit", "Lockstep", "Nups",
           "ParameterServer", "PolicyView", "ProtocolError", "ROW_OPTIMIZERS", "Relocation",
           "Replication", "RowOptimizer", "SparseTrainer", "TECHNIQUES", "TableSpec",
           "Technique", "bucket_size", "index_batch", "initial_rows", "initial_table",
           "install_abort_hooks", "list_checkpoints", "load_checkpoint", "loss_and_row_deltas",
           "read_manifest", "row_adagrad", "row_adam", "row_optimizer", "run_main",
           "run_on_root", "save_checkpoint", "stats_delta"]
