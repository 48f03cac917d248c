"""Stop and resume: SIGINT mid-epoch writes a checkpoint; the resumed 1-rank run is bit-identical."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import jaxps
from tests.conftest import REPO, mpi_env, sigint_after_first_epoch
from train.kge import synthetic


def test_sigint_mid_epoch_then_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    graph = synthetic.write_dataset(tmp_path / "g", synthetic.generate(400, 5, 12000, seed=2))
    base = [sys.executable, "-m", "train.kge", "--data", str(graph), "--dim", "16",
            "--batch-size", "32", "--negatives", "32", "--max-eval", "100", "--eval-every", "0",
            "--no-progress"]
    out = tmp_path / "stopped"
    status, text = sigint_after_first_epoch([*base, "--epochs", "500", "--out", str(out)], out,
                                            mpi_env(), pause=0.3)  # into the next epoch
    assert status == 3, text[-3000:]
    assert "SIGINT: finishing the current step" in text and "checkpoint written to" in text
    (ckpt,) = jaxps.list_checkpoints(out / "checkpoints")
    meta = jaxps.read_manifest(ckpt)["meta"]
    epochs = str(meta["epoch"] + 2)
    resumed = subprocess.run([*base, "--epochs", epochs, "--out", str(out), "--resume"],
                             cwd=REPO, env=mpi_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from epoch {meta['epoch']}" in resumed.stdout
    fresh = tmp_path / "fresh"
    straight = subprocess.run([*base, "--epochs", epochs, "--out", str(fresh)], cwd=REPO,
                              env=mpi_env(), capture_output=True, text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr[-3000:]
    for name in ("entity_embeddings.npy", "relation_embeddings.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(fresh / name))
