"""``python -m train.kge``: train and evaluate a KGE model (1 process or under mpiexec -n N).

Options and defaults: ``python -m train.kge --help`` (from train/kge/config.py).
"""

import jaxps
from train.kge.config import parse_args
from train.kge.train import run


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    # Any error on any rank, from option parsing to the last export, ends the whole job.
    jaxps.run_main(main)
