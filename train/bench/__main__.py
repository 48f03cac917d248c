"""``python -m train.bench``: the benchmark harness (train/bench/harness.py)."""

import sys

from train.bench.harness import main

if "--worker" in sys.argv:  # a rank of a job: any failure ends the whole job at once
    import jaxps
    sys.exit(jaxps.run_main(main))
sys.exit(main())
