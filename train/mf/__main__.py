"""``python -m train.mf``: train and evaluate biased MF (1 process or under mpiexec -n N).

Options and defaults: ``python -m train.mf --help`` (from train/mf/config.py).
"""

from train.mf.config import parse_args
from train.mf.train import run


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
