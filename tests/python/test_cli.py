"""The flash-kmeans command line."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import gaussian

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "faiss_flash.cli", *args], capture_output=True, text=True, env=env)


def write_fvecs(path, x):
    n, d = x.shape
    out = np.empty((n, d + 1), dtype="float32")
    out[:, 0] = np.array([d], dtype="int32").view("float32")[0]
    out[:, 1:] = x
    out.tofile(path)


def test_npy_to_centroids_and_index(tmp_path, rs):
    x = gaussian(rs, 3000, 8)
    np.save(tmp_path / "x.npy", x)
    r = cli(str(tmp_path / "x.npy"), "-k", "10", "--niter", "5", "--device", "cpu", "-o", str(tmp_path / "c.npy"),
            "--ivf-index", str(tmp_path / "ivf.index"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "c.npy").shape == (10, 8)
    import faiss
    assert faiss.read_index(str(tmp_path / "ivf.index")).ntotal == 3000


def test_fvecs_bvecs_and_compare(tmp_path, rs):
    x = gaussian(rs, 2000, 6)
    write_fvecs(tmp_path / "x.fvecs", x)
    r = cli(str(tmp_path / "x.fvecs"), "-k", "8", "--niter", "4", "--device", "cpu", "--compare", "-o",
            str(tmp_path / "c.fvecs"))
    assert r.returncode == 0, r.stderr
    assert "stock faiss" in r.stdout and "same assignment for 100.00%" in r.stdout
    b = np.hstack([np.full((500, 1), 4, "int32").view("uint8")[:, :4].reshape(500, 4),
                   rs.randint(0, 255, (500, 4)).astype("uint8")])
    b.tofile(tmp_path / "x.bvecs")
    assert cli(str(tmp_path / "x.bvecs"), "-k", "4", "--device", "cpu").returncode == 0


@pytest.mark.parametrize("content, word", [
    (b"\x08\x00\x00\x00" + b"\x00" * 10, "truncated"),
    (b"\x00\x00", "too short"),
    (b"\xff\xff\xff\xff" + b"\x00" * 8, "bad dimension"),
])
def test_malformed_fvecs(tmp_path, content, word):
    p = tmp_path / "bad.fvecs"
    p.write_bytes(content)
    r = cli(str(p), "-k", "2")
    assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr


def test_malformed_npy_and_missing_file(tmp_path):
    p = tmp_path / "bad.npy"
    p.write_bytes(b"not a numpy file")
    r = cli(str(p), "-k", "2")
    assert r.returncode == 2 and "not a valid .npy" in r.stderr
    r = cli(str(tmp_path / "nope.fvecs"), "-k", "2")
    assert r.returncode == 2 and "no such file" in r.stderr
