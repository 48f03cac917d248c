"""``python -m train.mf``: train and evaluate biased MF (1 process or under mpiexec -n N).

Options and defaults: ``python -m train.mf --help`` (from train/mf/config.py).
"""

import jaxps
from train.mf.config import parse_args
from train.mf.train import run


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    # Any error on any rank, from option parsing to the last export, ends the whole job.
    jaxps.run_main(main)
