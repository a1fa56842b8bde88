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


@pytest.mark.parametrize("name, content, word", [
    ("bad.bvecs", b"\x04\x00\x00\x00" + b"\x01" * 4 + b"\x04\x00\x00\x00" + b"\x01" * 2, "truncated"),
    ("bad.fvecs", (np.array([2], "int32").tobytes() + np.ones(2, "float32").tobytes()) +
     (np.array([3], "int32").tobytes() + np.ones(1, "float32").tobytes()), "row 1 has dimension 3"),
    ("nan.fvecs", np.array([2], "int32").tobytes() + np.array([1, np.nan], "float32").tobytes(), "NaN"),
    ("empty.fvecs", b"", "empty file"),
    ("data.txt", b"1 2 3", "unknown extension"),
])
def test_malformed_vector_files(tmp_path, name, content, word):
    p = tmp_path / name
    p.write_bytes(content)
    r = cli(str(p), "-k", "1")
    assert r.returncode == 2 and word in r.stderr and str(p) in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("array, word", [
    (np.zeros(10, "float32"), "2-D"),
    (np.zeros((4, 2), "complex64"), "real numbers"),
    (np.zeros((0, 3), "float32"), "empty"),
    (np.array([[1e39, 0]], "float64"), "NaN or Inf"),
])
def test_bad_npy_contents(tmp_path, array, word):
    p = tmp_path / "x.npy"
    np.save(p, array)
    r = cli(str(p), "-k", "1")
    assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_directory_too_few_vectors_and_bad_k(tmp_path, rs):
    r = cli(str(tmp_path), "-k", "2")
    assert r.returncode == 2 and "is a directory" in r.stderr
    np.save(tmp_path / "x.npy", gaussian(rs, 5, 4))
    r = cli(str(tmp_path / "x.npy"), "-k", "10")
    assert r.returncode == 2 and "cannot make 10 clusters" in r.stderr and "Traceback" not in r.stderr
    r = cli(str(tmp_path / "x.npy"), "-k", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_progress_lines_and_inner_product_index(tmp_path, rs):
    x = gaussian(rs, 2000, 8)
    np.save(tmp_path / "x.npy", x)
    r = cli(str(tmp_path / "x.npy"), "-k", "4", "--niter", "3", "--device", "cpu", "--verbose")
    assert r.returncode == 0 and r.stdout.count("Iteration") == 3, r.stdout
    r = cli(str(tmp_path / "x.npy"), "-k", "4", "--niter", "3", "--device", "cpu", "--quiet")
    assert r.returncode == 0 and "Iteration" not in r.stdout
    r = cli(str(tmp_path / "x.npy"), "-k", "4", "--metric", "ip", "--device", "cpu",
            "--ivf-index", str(tmp_path / "ip.index"), "-o", str(tmp_path / "c.fvecs"))
    assert r.returncode == 0, r.stderr
    import faiss
    index = faiss.read_index(str(tmp_path / "ip.index"))
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT and index.ntotal == 2000
    from faiss_flash.io import read_vectors
    c = read_vectors(str(tmp_path / "c.fvecs"))
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, rtol=1e-5)


def test_wrapper_script(tmp_path, rs):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    r = subprocess.run([os.path.join(ROOT, "scripts", "flash-kmeans"), str(tmp_path / "x.npy"), "-k", "3",
                        "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0 and "objective" in r.stdout, r.stderr


def test_placement_flags(tmp_path, rs):
    x = gaussian(rs, 2000, 8)
    np.save(tmp_path / "x.npy", x)
    ok = cli(str(tmp_path / "x.npy"), "-k", "5", "--niter", "3", "--device", "cpu", "--devices", "0,0",
             "--streaming", "force", "--max-gpu-memory", "2", "--transfer-dtype", "float16", "-o",
             str(tmp_path / "c.npy"))
    assert ok.returncode == 0, ok.stderr  # CUDA-only options: the CPU engine runs as usual
    bad = cli(str(tmp_path / "x.npy"), "-k", "5", "--devices", "zero")
    assert bad.returncode == 2 and "--devices" in bad.stderr
