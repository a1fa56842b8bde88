"""The flash-kmeans command line."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import faiss_flash
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


def test_placement_line():
    from faiss_flash.cli import describe_placement
    base = dict(shards=2, pieces=8, resident_rows=600, streamed_rows=400, streamed_bytes=204800,
                host_pinned=False, converted_rows=0, setup_s=0.5, copy_s=0.0123, compute_s=0.0456,
                iteration_s=0.05)
    assert describe_placement(dict(base, streamed_rows=0, streamed_bytes=0)) == (
        "placement: 2 devices, 100% of 600 rows resident")
    assert describe_placement(base) == (
        "placement: 2 devices, 60% of 1000 rows resident, 0.00 GB streamed per iteration (staged): "
        "copy 12.3 ms, compute 45.6 ms per iteration")
    assert "(pinned)" in describe_placement(dict(base, host_pinned=True))
    assert "(converted once into pinned memory)" in describe_placement(dict(base, converted_rows=400))
    assert "(100 rows converted once, the others staged)" in describe_placement(dict(base, converted_rows=100))
    assert describe_placement(dict(base, shards=1)).startswith("placement: 1 device, ")
    assert ", 99% of 1000 rows resident" in describe_placement(dict(base, resident_rows=999, streamed_rows=1))
    assert ", <1% of 1000 rows resident" in describe_placement(dict(base, resident_rows=1, streamed_rows=999))


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


# Resumable runs (--checkpoint). The library's own tests (tests/test_checkpoint.cpp) cover the
# format; these check the command line around it: same bytes out, resume after SIGKILL and
# SIGINT, and the refusals.

def _ckpt_args(path, every=None):
    return ["--checkpoint", str(path)] + ([] if every is None else ["--checkpoint-every", str(every)])


@pytest.mark.parametrize("ext, every", [(".npy", None), (".fvecs", 3)])
def test_checkpointed_run_gives_the_same_centroids(tmp_path, rs, ext, every):
    x = gaussian(rs, 3000, 8)
    data = str(tmp_path / f"x{ext}")
    np.save(data, x) if ext == ".npy" else write_fvecs(data, x)
    common = [data, "-k", "10", "--niter", "7", "--device", "cpu"]  # 7: the last checkpoint comes at the end
    plain = cli(*common, "-o", str(tmp_path / f"plain{ext}"))
    assert plain.returncode == 0, plain.stderr
    ckpt = tmp_path / "run.ckpt"
    first = cli(*common, *_ckpt_args(ckpt, every), "-o", str(tmp_path / f"ckpt{ext}"))
    assert first.returncode == 0, first.stderr
    assert ckpt.exists() and "found checkpoint" not in first.stdout
    assert (tmp_path / f"ckpt{ext}").read_bytes() == (tmp_path / f"plain{ext}").read_bytes()
    # The same command again resumes from the finished run's checkpoint: nothing left to do.
    again = cli(*common, *_ckpt_args(ckpt, every), "-o", str(tmp_path / f"again{ext}"))
    assert again.returncode == 0, again.stderr
    assert f"found checkpoint {ckpt}" in again.stdout
    assert (tmp_path / f"again{ext}").read_bytes() == (tmp_path / f"plain{ext}").read_bytes()


def test_checkpoint_with_compare(tmp_path, rs):
    # --compare runs stock faiss.Kmeans with the run's parameters: not the checkpoint's.
    np.save(tmp_path / "x.npy", gaussian(rs, 2000, 8))
    r = cli(str(tmp_path / "x.npy"), "-k", "8", "--niter", "3", "--device", "cpu",
            "--checkpoint", str(tmp_path / "run.ckpt"), "--compare")
    assert r.returncode == 0 and "stock faiss" in r.stdout and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A CPU run of about 2.5 s on 2 cores (30 iterations of 60000 x 64 points, k = 512: one
    iteration is ~0.08 s, so a kill after the first checkpoint lands with most of the run left),
    and the centroids of an uninterrupted run of it."""
    tmp = tmp_path_factory.mktemp("long_run")
    seed = 1234
    print(f"numpy seed {seed}")
    np.save(tmp / "x.npy", gaussian(np.random.RandomState(seed), 60000, 64))
    args = [str(tmp / "x.npy"), "-k", "512", "--niter", "30", "--device", "cpu", "--quiet"]
    r = cli(*args, "-o", str(tmp / "uninterrupted.npy"))
    assert r.returncode == 0, r.stderr
    return args, (tmp / "uninterrupted.npy").read_bytes()


def _start_until_checkpoint(args, ckpt, timeout=60):
    """The CLI started in the background, returned once its first checkpoint exists (the library
    writes it atomically: once the name exists, the file is complete)."""
    # SIGINT handled (not ignored) in the child, as an interactive shell leaves it: a test run in
    # the background inherits it ignored, and the library leaves an ignored SIGINT ignored. A
    # handler set here becomes the default in the child at exec (no preexec_fn: this process
    # has threads).
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "faiss_flash.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ckpt) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if not os.path.exists(ckpt):
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no checkpoint {ckpt} after {timeout} s (exit status {proc.returncode}): {err}")
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the run ended (exit status {proc.returncode}) before it could be stopped: "
                    f"make the data larger\n{out}{err}")
    return proc


def test_ctrl_c_outside_training_is_one_line_and_leaves_no_partial_output(tmp_path, rs, monkeypatch, capsys):
    # Ctrl-C while the data is read or an output written ends the command as during training:
    # exit status 130 and one line, no traceback; the output cut short is removed.
    from faiss_flash import cli as cli_module
    np.save(tmp_path / "x.npy", gaussian(rs, 100, 4))

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "read_vectors", interrupted)
    assert cli_module.main([str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu"]) == 130
    assert capsys.readouterr().err == "flash-kmeans: interrupted\n"
    monkeypatch.undo()

    def cut_short(path, centroids):  # Ctrl-C half way through writing -o: no partial file left
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "write_vectors", cut_short)
    out = tmp_path / "c.npy"
    assert cli_module.main([str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", "-o", str(out)]) == 130
    assert capsys.readouterr().err.endswith("flash-kmeans: interrupted\n") and not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_stopped_run_resumes_to_the_same_centroids(tmp_path, long_run, sig):
    args, uninterrupted = long_run
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "c.npy"
    cmd = [*args, "--checkpoint", str(ckpt), "-o", str(out)]
    proc = _start_until_checkpoint(cmd, ckpt)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    # The centroids are written only after the last iteration: none means the run was stopped
    # before its end (a run that got there first would fail here rather than test nothing).
    assert not out.exists(), f"the run finished before {sig.name}: make the data larger"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
    else:  # the library stops after the current iteration, saves the checkpoint and says where
        assert proc.returncode == 130, (proc.returncode, stderr)
        assert stderr.strip() == f"flash-kmeans: interrupted; run the same command again to resume from {ckpt}"
    assert ckpt.exists()
    mid = faiss_flash.read_checkpoint(ckpt).iterations_done
    assert 0 < mid < 30, mid  # stopped mid-way
    r = cli(*cmd)
    assert r.returncode == 0, r.stderr
    assert f"found checkpoint {ckpt} ({mid} iterations done)" in r.stdout
    assert out.read_bytes() == uninterrupted


@pytest.mark.parametrize("args, word", [
    (["--checkpoint-every", "2"], "--checkpoint-every: needs --checkpoint"),
    (["--checkpoint", ""], "--checkpoint: needs a file name"),
    (["--checkpoint", "{tmp}/run.ckpt", "--checkpoint-every", "0"],
     "--checkpoint-every: expected a positive integer, got 0"),
    (["--checkpoint", "{tmp}/run.ckpt", "--checkpoint-every", "-2"],
     "--checkpoint-every: expected a positive integer, got -2"),
    (["--checkpoint", "{tmp}/no/such/dir/run.ckpt"], "--checkpoint: {tmp}/no/such/dir/run.ckpt: no such directory"),
    (["--checkpoint", "{tmp}"], "--checkpoint: {tmp}: is a directory"),
    (["--checkpoint", "{tmp}/x.npy"], "--checkpoint: {tmp}/x.npy: the same file as input"),
    (["--checkpoint", "{tmp}/c.npy", "-o", "{tmp}/c.npy"], "--checkpoint: {tmp}/c.npy: the same file as -o"),
    pytest.param(["--checkpoint", "/proc/run.ckpt"], "--checkpoint: /proc/run.ckpt: cannot write in /proc",
                 marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux' /proc")),
])
def test_bad_checkpoint_options_are_usage_errors(tmp_path, rs, args, word):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", *args)
    assert r.returncode == 2 and word.replace("{tmp}", str(tmp_path)) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""  # nothing was trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # nor written


@pytest.mark.parametrize("change, word", [
    (["-k", "5"], "was written for another problem (k: 4 there, 5 here)"),
    (["--metric", "ip"], "was written for another problem (the metric)"),
    (["--seed", "7"], "was written for another run of this data"),
    (["--niter", "2"], "holds 4 iterations, more than niter = 2"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, rs, change, word):
    # 1000 points, not subsampled (k * max_points_per_centroid = 1024): the seed changes only the
    # initial centroids.
    np.save(tmp_path / "x.npy", gaussian(rs, 1000, 8))
    ckpt = tmp_path / "run.ckpt"
    common = [str(tmp_path / "x.npy"), "-k", "4", "--niter", "4", "--device", "cpu", "--checkpoint", str(ckpt)]
    assert cli(*common).returncode == 0
    before = ckpt.read_bytes()
    r = cli(*common, *change, "-o", str(tmp_path / "c.npy"))
    assert r.returncode == 2 and r.stderr.strip().startswith(f"flash-kmeans: checkpoint {ckpt} {word}"), r.stderr
    assert "Traceback" not in r.stderr and "objective" not in r.stdout
    assert ckpt.read_bytes() == before and not (tmp_path / "c.npy").exists()  # left as it was


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, rs):
    np.save(tmp_path / "x.npy", gaussian(rs, 500, 4))
    ckpt = tmp_path / "notes.txt"
    ckpt.write_text("not a checkpoint\n")
    r = cli(str(tmp_path / "x.npy"), "-k", "3", "--device", "cpu", "--checkpoint", str(ckpt))
    assert r.returncode == 2 and r.stderr.strip() == f"flash-kmeans: {ckpt} is not a faiss-flash checkpoint"
    assert ckpt.read_text() == "not a checkpoint\n"
