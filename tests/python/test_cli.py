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


def _faiss_flash_cuda():
    import faiss_flash
    return faiss_flash.cuda_available()


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


@pytest.mark.parametrize("args, word", [
    (["--max-points-per-centroid", "0"], "--max-points-per-centroid: expected a positive integer, got 0"),
    (["--max-points-per-centroid", "-3"], "--max-points-per-centroid: expected a positive integer, got -3"),
    (["--niter", "0"], "--niter: expected a positive integer, got 0"),
    (["--niter", "-1"], "--niter: expected a positive integer, got -1"),
    (["-k", "0"], "-k: expected a positive integer, got 0"),
    (["-k", "two"], "-k: expected a positive integer, got 'two'"),
    (["--device", "tpu"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (["--max-gpu-memory", "0"], "--max-gpu-memory: expected a positive number"),
    (["--devices", "0,-1"], "--devices: expected comma-separated CUDA ordinals"),
])
def test_bad_numbers_are_usage_errors(tmp_path, rs, args, word):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", *args)
    assert r.returncode == 2 and word in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("flag, name, word", [
    ("-o", "c.txt", "unknown output extension '.txt' (expected .npy or .fvecs)"),
    ("-o", "no/such/dir/c.npy", "no such directory"),
    ("-o", "a_directory.npy", "is a directory"),
    ("--ivf-index", "no/such/dir/ivf.index", "no such directory"),
])
def test_bad_output_paths_rejected_before_training(tmp_path, rs, flag, name, word):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    (tmp_path / "a_directory.npy").mkdir()
    r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", "--verbose", flag, str(tmp_path / name))
    assert r.returncode == 2 and f"{flag}: {tmp_path / name}: {word}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""  # nothing was trained


@pytest.mark.skipif(_faiss_flash_cuda(), reason="a CUDA device is visible: the no-GPU error cannot occur")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, rs, device):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", device)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    message = f"flash-kmeans: --device {device}: no CUDA device is available (or this build has no CUDA)"
    assert r.stderr.strip() == message


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux' /proc")
def test_unwritable_outputs_after_training_are_one_line_errors(tmp_path, rs):
    # /proc is a directory where nobody, root included, can create a file: the checks before
    # training pass, the write fails.
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    for flag, name in (("-o", "/proc/c.npy"), ("--ivf-index", "/proc/ivf.index")):
        r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", flag, name)
        assert r.returncode == 1 and f"{name}: cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "objective" in r.stdout
