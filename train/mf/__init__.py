"""Matrix factorization on the parameter server: ``python -m train.mf`` (see README)."""
