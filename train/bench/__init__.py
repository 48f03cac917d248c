"""The benchmark: ``python -m train.bench`` (the harness: workloads x techniques x rank
counts, each its own mpiexec job; ``harness.py``), its workload registry
(``workloads.py``, ``python -m train.bench.workloads``) and the PS micro-benchmark
(``ps.py``, ``python -m train.bench.ps``, ``./dev.sh bench``). docs/bench.md."""
