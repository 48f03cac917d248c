"""Where the trainer's step runs: unchanged on the CPU, rank r on accelerator r % n."""

import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxps
from jaxps._src import devices

REPO = Path(__file__).resolve().parents[1]


def test_cpu_backend_keeps_jax_default():
    assert jax.default_backend() == "cpu"
    assert devices.step_device(3) is None
    assert devices.step_device(3, "cpu") == jax.devices("cpu")[0]
    d = jax.devices()[0]
    assert devices.step_device(0, d) is d


def test_ranks_of_a_host_take_turns_over_its_devices():
    gpus = ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert [devices.share(gpus, r) for r in range(6)] == gpus + gpus[:2]
    with pytest.raises(jaxps.InputError, match="no JAX devices"):
        devices.share([], 0)


def test_unknown_device_says_how_to_get_one():
    with pytest.raises(jaxps.InputError, match=r"jaxps\[cuda\]"):
        devices.step_device(0, "gpu")
    with pytest.raises(jaxps.InputError, match="jax.Device"):
        devices.step_device(0, 3)


def test_trainer_reports_its_device_and_trains_on_it():
    spec = jaxps.TableSpec(num_keys=50, dim=4, state_dim=4, state_init=0.1)
    with jaxps.ParameterServer({"emb": spec}) as ps:
        assert ps.host == (0, 1, False)
        loss = lambda rows, data: (rows["emb"][data["i"]] ** 2).sum()
        trainer = jaxps.SparseTrainer(ps, loss, {"emb": jaxps.row_adagrad(0.1)},
                                      device="cpu")
        assert trainer.device == jax.devices("cpu")[0]
        keys = np.arange(10)
        before = ps.pull("emb", keys)[:, :4]
        m = trainer.train_epoch([jaxps.Batch({"emb": keys}, {"i": np.arange(10)})])
        assert m.batches == 1 and not np.allclose(ps.pull("emb", keys)[:, :4], before)


def _dev_env(tmp_path, gpu: bool) -> dict:
    """dev.sh env's variables with (or without) an nvidia-smi that finds a GPU."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n" if gpu
                   else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE", "JAXPS_EXTRAS")}
    env["PATH"] = f"{fake}:{env['PATH']}"
    out = subprocess.run(["bash", str(REPO / "dev.sh"), "env"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_dev_sh_forces_the_cpu_only_without_a_gpu(tmp_path):
    cpu = _dev_env(tmp_path, gpu=False)
    assert cpu["JAX_PLATFORMS"] == "cpu"
    gpu = _dev_env(tmp_path, gpu=True)
    assert gpu["JAX_PLATFORMS"] == ""  # JAX picks the GPU
    assert gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # several ranks share a GPU
    assert gpu["JAXPS_EXTRAS"] == "dev,cuda"
