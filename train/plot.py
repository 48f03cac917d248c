"""``python -m train.plot DIR``: PNG plots of a training run's metrics (see train/kge/plot.py)."""

from train.kge.plot import main

if __name__ == "__main__":
    main()
