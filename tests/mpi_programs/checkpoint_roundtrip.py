"""Save a checkpoint on N ranks, load it on M; used by tests/test_checkpoint.py and, with a
large table, to measure the memory a load takes per rank (printed as JSON lines).

    mpiexec -n 4 python tests/mpi_programs/checkpoint_roundtrip.py save DIR adaptive [KEYS WIDTH]
    mpiexec -n 2 python tests/mpi_programs/checkpoint_roundtrip.py load DIR relocation [KEYS WIDTH]

save: every rank pushes to random keys (and localizes some, so rows are scattered over the
ranks), then the checkpoint is written; rank 0 also writes DIR/expect-<table>.npy (the rows
its owner holds after the save) when the table is small. load: the rows after loading must equal them.
"""

import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from mpi4py import MPI

import jaxps

mode, root, technique = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
keys, width = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (5000, 6)
small = keys * width <= 1 << 22
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
tables = {"e": jaxps.TableSpec(keys, width - 2, state_dim=2, seed=3),
          "r": jaxps.TableSpec(17, 3)}


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


rss_before = rss_mib()
with jaxps.ParameterServer(tables, technique=technique) as ps:
    if mode == "save":
        rng = np.random.default_rng(rank)
        for _ in range(5):
            k = np.unique(rng.integers(0, keys, min(keys, 2000)))
            ps.localize("e", k[:200])
            ps.push("e", k, rng.normal(size=(len(k), width)).astype(np.float32))
            ps.push("r", np.arange(17), np.ones((17, 3), np.float32))
            ps.advance_clock()
        path = jaxps.save_checkpoint(ps, root, step=7, meta={"who": "roundtrip"}, keep=1)
        if small:
            # The owners' rows: a replica may differ from its owner in the last bit (it adds
            # its own deltas to the owner's value in another order), the checkpoint holds the
            # owners'.
            for t, spec in tables.items():
                owned = ps.owned_keys(t)
                parts = comm.allgather((owned, ps.pull(t, owned)))
                if rank == 0:
                    expect = np.empty((spec.num_keys, spec.width), np.float32)
                    for k, r in parts:
                        expect[k] = r
                    np.save(root / f"expect-{t}.npy", expect)
        ps.barrier()
        if rank == 0:
            print(f"saved {path}", flush=True)
    else:
        path = jaxps.list_checkpoints(root)[-1]
        rss_built = rss_mib()
        ps.barrier()
        reset_peak_rss()
        tracemalloc.start()
        t0 = time.perf_counter()
        manifest = jaxps.load_checkpoint(ps, path)
        seconds = time.perf_counter() - t0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_rss = rss_mib("VmHWM")  # the peak since reset_peak_rss: during the load
        share = sum(s.num_keys * s.width * 4 for s in tables.values()) / size / 2**20
        print(json.dumps({"rank": rank, "ranks": size, "written_by": manifest["ranks"],
                          "share_mib": round(share, 1),
                          "rss_before_ps_mib": round(rss_before, 1),
                          "rss_after_ps_built_mib": round(rss_built, 1),
                          "peak_rss_during_load_mib": round(peak_rss, 1),
                          "load_added_traced_peak_mib": round(traced_peak / 2**20, 2),
                          "load_seconds": round(seconds, 2)}), flush=True)
        if small:
            for t, spec in tables.items():
                got = ps.pull(t, np.arange(spec.num_keys))
                expect = np.load(root / f"expect-{t}.npy")
                same = np.array_equal(got, expect)
                print(f"rank {rank} table {t} identical {same}", flush=True)
                assert same, t
