"""flash-kmeans: cluster a .fvecs / .bvecs / .npy file from the shell.

  flash-kmeans data.fvecs -k 1024 [--niter 25] [--seed 1234] [--metric l2|ip]
               [--device auto|cpu|cuda|cuda:N] [-o centroids.npy|.fvecs]
               [--devices 0,1] [--streaming auto|off|force] [--max-gpu-memory GB]
               [--transfer-dtype float16|bfloat16] [--fp32-mode exact|tf32]
               [--ivf-index out.faissindex] [--compare] [--verbose]
               [--checkpoint run.ckpt [--checkpoint-every N]]

With --checkpoint the run is resumable: the centroids are saved every N iterations (1 unless
--checkpoint-every says otherwise) and at the end; the same command run again after a crash or
Ctrl-C continues from the file to the same centroids as an uninterrupted run.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from ._arrays import parse_device
from ._faiss_flash import BadCheckpointError
from .checkpoint import read_checkpoint
from .io import DataFileError, check_output_dir, check_output_path, read_vectors, write_vectors


def _positive(convert, what):
    """An argparse type: the text converted by convert (int or float), positive and finite."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not 0 < v < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


_positive_int = _positive(int, "a positive integer")
_positive_float = _positive(float, "a positive number")


def _device(text):
    try:
        parse_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device: ")) from None
    return text


def _ordinals(text):
    try:
        v = [int(t) for t in text.split(",")]
    except ValueError:
        v = []
    if not v or min(v) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated CUDA ordinals (>= 0), got {text!r}")
    return v


def _check_checkpoint_path(path):
    """Raises DataFileError unless a checkpoint can be written at path. An existing file is left
    alone (that is how a run resumes); the directory is probed with an unnamed temporary file,
    since os.access says yes to root even where nobody can create a file (/proc)."""
    check_output_dir(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise DataFileError(f"{path}: cannot write in {parent} ({e.strerror or e})") from None


def describe_placement(p):
    """One line on how the CUDA engine sharded or streamed the training rows."""
    rows = p["resident_rows"] + p["streamed_rows"]
    share = 100 * p["resident_rows"] // rows  # (rounded down: 100% only when nothing streams)
    resident = f"{share}%" if share > 0 or p["resident_rows"] == 0 else "<1%"
    line = f"placement: {p['shards']} device{'s' if p['shards'] > 1 else ''}, {resident} of {rows} rows resident"
    if p["streamed_rows"] > 0:
        if p["converted_rows"] == p["streamed_rows"]:
            how = "converted once into pinned memory"
        elif p["converted_rows"] > 0:
            how = f"{p['converted_rows']} rows converted once, the others staged"
        else:
            how = "pinned" if p["host_pinned"] else "staged"
        line += (f", {p['streamed_bytes'] / 1e9:.2f} GB streamed per iteration ({how}): "
                 f"copy {1e3 * p['copy_s']:.1f} ms, compute {1e3 * p['compute_s']:.1f} ms per iteration")
    return line


def _remove_partial(path):
    """An output whose writing Ctrl-C cut short: removed, so that no partial file is left."""
    try:
        os.remove(path)
    except OSError:
        pass


def main(argv=None):
    """The command; returns its exit status. Ctrl-C outside training (reading the data, writing
    an output, --compare) ends it with exit status 130 and one line, as during training."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("flash-kmeans: interrupted", file=sys.stderr)
        return 130


def _main(argv):
    ap = argparse.ArgumentParser(prog="flash-kmeans", description="Exact k-means with faiss-flash")
    ap.add_argument("input")
    ap.add_argument("-k", type=_positive_int, required=True)
    ap.add_argument("--niter", type=_positive_int, default=25)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--metric", choices=["l2", "ip"], default="l2")
    ap.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda or cuda:N")
    ap.add_argument("--max-points-per-centroid", type=_positive_int, default=256,
                    help="subsample the data to k times this many rows (256)")
    ap.add_argument("--devices", type=_ordinals, help="shard over these CUDA devices, e.g. 0,1")
    ap.add_argument("--streaming", choices=["auto", "off", "force"], default="auto",
                    help="data larger than the GPU: stream what does not fit (auto)")
    ap.add_argument("--max-gpu-memory", type=_positive_float, help="GB of GPU memory to use per device")
    ap.add_argument("--transfer-dtype", choices=["float32", "float16", "bfloat16"],
                    help="send the float32 points to the GPU as this type")
    ap.add_argument("--fp32-mode", choices=["exact", "tf32"], default="exact",
                    help="float32 products on the GPU: exact (default) or TF32-class (faster)")
    ap.add_argument("-o", "--output")
    ap.add_argument("--ivf-index", help="also write a trained IVF-Flat index with nlist = k")
    ap.add_argument("--compare", action="store_true", help="also run stock faiss.Kmeans and compare")
    ap.add_argument("--verbose", action="store_true",
                    help="a progress line per iteration (on by default for long runs)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--checkpoint", metavar="PATH",
                    help="resumable run: save the centroids here; an existing checkpoint of the same run is resumed")
    ap.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                    help="iterations between checkpoints (1: a crash loses at most one iteration)")
    args = ap.parse_args(argv)
    if args.checkpoint is None and args.checkpoint_every is not None:
        ap.error("--checkpoint-every: needs --checkpoint")
    if args.checkpoint == "":
        ap.error("--checkpoint: needs a file name")
    # Everything that can be checked before reading the data and training is checked here.
    outputs = (("-o", args.output, check_output_path), ("--ivf-index", args.ivf_index, check_output_dir),
               ("--checkpoint", args.checkpoint, _check_checkpoint_path))
    for flag, path, check in outputs:
        if path is not None:
            try:
                check(path)
            except DataFileError as e:
                ap.error(f"{flag}: {e}")
    if args.checkpoint is not None:
        # The checkpoint is rewritten during the run: it must not be the input or another output.
        for flag, path in (("input", args.input), ("-o", args.output), ("--ivf-index", args.ivf_index)):
            if path is not None and os.path.realpath(path) == os.path.realpath(args.checkpoint):
                ap.error(f"--checkpoint: {args.checkpoint}: the same file as {flag}")
    from . import cuda_available
    if parse_device(args.device)[0] == "cuda" and not cuda_available():
        print(f"flash-kmeans: --device {args.device}: no CUDA device is available (or this build has no CUDA)",
              file=sys.stderr)
        return 2
    try:
        x = read_vectors(args.input)
    except DataFileError as e:
        print(f"flash-kmeans: {e}", file=sys.stderr)
        return 2
    import faiss
    from . import Kmeans
    n, d = x.shape
    if n < args.k:
        print(f"flash-kmeans: {args.input}: {n} vectors cannot make {args.k} clusters", file=sys.stderr)
        return 2
    # Long runs show a progress line per iteration: above about 2e11 flops (2 n k d niter on the
    # subsample), a few seconds on a CPU.
    rows = min(n, args.k * args.max_points_per_centroid)
    long_run = 2.0 * rows * args.k * d * args.niter > 2e11
    verbose = (args.verbose or long_run) and not args.quiet
    params = dict(niter=args.niter, seed=args.seed, verbose=verbose, spherical=args.metric == "ip",
                  max_points_per_centroid=args.max_points_per_centroid)
    placement = dict(streaming=args.streaming, transfer_dtype=args.transfer_dtype, fp32_mode=args.fp32_mode)
    if args.devices:
        placement["devices"] = args.devices
    if args.max_gpu_memory is not None:
        placement["max_gpu_memory"] = max(1, int(args.max_gpu_memory * 1e9))
    if args.checkpoint is not None:
        # (with the placement, not params: --compare's stock faiss.Kmeans takes params; without
        # --checkpoint-every, Kmeans writes one every iteration)
        placement["checkpoint_path"] = args.checkpoint
        if args.checkpoint_every is not None:
            placement["checkpoint_every"] = args.checkpoint_every
        # The library checks that the file belongs to this run (and says what differs if not):
        # a run resumes from it, or stops with that reason.
        try:
            found = read_checkpoint(args.checkpoint)
        except BadCheckpointError:  # not a checkpoint: the run refuses it below, with this reason
            found = None
        if found is not None:
            print(f"found checkpoint {args.checkpoint} ({found.iterations_done} iterations done)", flush=True)
    try:
        km = Kmeans(d, args.k, device=args.device, **params, **placement)
        t0 = time.perf_counter()
        km.train(x)
        t_ours = time.perf_counter() - t0
    except BadCheckpointError as e:  # a checkpoint of another run, or a damaged one: the message names it
        print(f"flash-kmeans: {str(e).removeprefix('faiss-flash: ')}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        print(f"flash-kmeans: {args.input}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The library saves the checkpoint before it raises (a Ctrl-C before training began
        # leaves none: then the command starts afresh).
        if args.checkpoint is not None and os.path.exists(args.checkpoint):
            print(f"flash-kmeans: interrupted; run the same command again to resume from {args.checkpoint}",
                  file=sys.stderr)
        else:
            print("flash-kmeans: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as e:  # the engine failed (a CUDA error, out of memory)
        print(f"flash-kmeans: {str(e) or type(e).__name__}", file=sys.stderr)
        return 1
    if verbose:
        print(flush=True)
    print(f"{n} vectors, d={d}, k={args.k}: objective {km.obj[-1]:.6g} in {t_ours:.3f} s ({args.niter} iterations)")
    if km.placement_report is not None and not args.quiet:
        print(describe_placement(km.placement_report))
    if args.output:
        try:
            write_vectors(args.output, km.centroids)
        except KeyboardInterrupt:
            _remove_partial(args.output)
            raise
        except OSError as e:
            print(f"flash-kmeans: {args.output}: cannot write ({e.strerror or e})", file=sys.stderr)
            return 1
        print(f"centroids written to {args.output}")
    if args.ivf_index:
        quantizer = faiss.IndexFlatIP(d) if args.metric == "ip" else faiss.IndexFlatL2(d)
        metric = faiss.METRIC_INNER_PRODUCT if args.metric == "ip" else faiss.METRIC_L2
        index = faiss.IndexIVFFlat(quantizer, d, args.k, metric)
        quantizer.add(km.centroids)
        index.is_trained = True
        index.add(x)
        try:
            faiss.write_index(index, args.ivf_index)
        except KeyboardInterrupt:
            _remove_partial(args.ivf_index)
            raise
        except RuntimeError as e:  # FAISS' I/O errors
            print(f"flash-kmeans: {args.ivf_index}: cannot write ({str(e).splitlines()[-1]})", file=sys.stderr)
            return 1
        print(f"IVF-Flat index (nlist={args.k}, {index.ntotal} vectors) written to {args.ivf_index}")
    if args.compare:
        ref = faiss.Kmeans(d, args.k, **dict(params, verbose=False))
        t0 = time.perf_counter()
        ref.train(x)
        t_ref = time.perf_counter() - t0
        _, i_ours = km.assign(x)
        _, i_ref = ref.assign(x)
        agree = float(np.mean(i_ours == i_ref))
        print(f"{'':14s} {'time (s)':>10s} {'objective':>14s}")
        print(f"{'faiss-flash':14s} {t_ours:10.3f} {km.obj[-1]:14.6g}")
        print(f"{'stock faiss':14s} {t_ref:10.3f} {ref.obj[-1]:14.6g}")
        print(f"speedup {t_ref / t_ours:.2f}x; same assignment for {100 * agree:.2f}% of the vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
