"""Sharded checkpoints (jaxps.save_checkpoint / load_checkpoint): one process and under mpiexec."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import jaxps
from tests.conftest import mpirun

PROGRAM = "tests/mpi_programs/checkpoint_roundtrip.py"


def _ps(technique="adaptive"):
    if technique == "nups":
        technique = jaxps.Nups(hot_keys={"e": np.arange(10), "r": np.arange(5)})
    return jaxps.ParameterServer({"e": jaxps.TableSpec(300, 4, state_dim=1),
                                  "r": jaxps.TableSpec(5, 2)}, technique=technique)


@pytest.mark.parametrize("technique", sorted(jaxps.TECHNIQUES))
def test_roundtrip_in_one_process(tmp_path, technique):
    rng = np.random.default_rng(0)
    with _ps(technique) as ps:
        ps.push("e", np.arange(300), rng.normal(size=(300, 5)).astype(np.float32))
        expect = ps.pull("e", np.arange(300))
        path = jaxps.save_checkpoint(ps, tmp_path, step=3, meta={"epoch": 1})
    with _ps(technique) as ps:
        manifest = jaxps.load_checkpoint(ps, path)
        np.testing.assert_array_equal(ps.pull("e", np.arange(300)), expect)
    assert manifest["meta"] == {"epoch": 1} and manifest["step"] == 3
    assert manifest["ranks"] == 1 and manifest["technique"] == technique
    assert manifest["tables"]["e"] == {"num_keys": 300, "dim": 4, "state_dim": 1, "width": 5}
    shard = manifest["shards"][0]["e"]
    assert shard["count"] == 300 and len(shard["rows"]["sha256"]) == 64


def test_manifest_is_written_last_and_the_folder_renamed(tmp_path):
    with _ps() as ps:
        path = jaxps.save_checkpoint(ps, tmp_path, step=1)
        jaxps.save_checkpoint(ps, tmp_path, step=2, keep=1)
    assert path.name == "step-000000000001" and not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000000002"]
    files = json.loads((tmp_path / "step-000000000002" / "manifest.json").read_text())
    assert files["format"] == "jaxps-checkpoint" and files["version"] == 1


def test_load_refuses_another_table_shape(tmp_path):
    with _ps() as ps:
        path = jaxps.save_checkpoint(ps, tmp_path, step=1)
    with jaxps.ParameterServer({"e": jaxps.TableSpec(300, 3, state_dim=1),
                                "r": jaxps.TableSpec(5, 2)}) as ps:
        with pytest.raises(jaxps.CheckpointError, match="table 'e' width: checkpoint 5, PS 4"):
            jaxps.load_checkpoint(ps, path)


def test_a_damaged_row_that_reads_as_nan_is_a_checksum_mismatch(tmp_path):
    """A flipped bit can make a float NaN: the load names the damage (checksum), not NaN."""
    with _ps() as ps:
        path = jaxps.save_checkpoint(ps, tmp_path, step=1)
    rows = next(path.glob("e.*.rows.npy"))
    data = bytearray(rows.read_bytes())
    data[-4:] = np.array([np.nan], np.float32).tobytes()  # the last row's last float
    rows.write_bytes(bytes(data))
    with _ps() as ps:
        with pytest.raises(jaxps.CheckpointError, match="checksum mismatch"):
            jaxps.load_checkpoint(ps, path)


def test_four_ranks_adaptive_loads_on_one_and_two_ranks_with_identical_rows(tmp_path):
    res = mpirun(4, [PROGRAM, "save", str(tmp_path), "adaptive"], timeout=120)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for ranks, technique in ((1, "adaptive"), (2, "adaptive"), (2, "classic")):
        res = mpirun(ranks, [PROGRAM, "load", str(tmp_path), technique], timeout=120)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert out.count("identical True") == 2 * ranks, out[-3000:]
        assert re.findall(r'"written_by": (\d+)', out) == ["4"] * ranks, out[-3000:]
