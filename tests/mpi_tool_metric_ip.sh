#!/bin/sh
# The MPI tool's --metric ip turns spherical k-means on, as the CLI's: every centroid it writes
# has unit norm (plain inner-product Lloyd, as before, left them at the points' scale). That the
# metric is inner product is checked by the library's own tests (mpi_kmeans_check).
#   mpi_tool_metric_ip.sh MPIEXEC FLASH_MPI_KMEANS
mpiexec=$1 tool=$2
rm -f mpi_ip.fvecs
"$mpiexec" --oversubscribe -np 2 "$tool" --synthetic 2000 --dim 8 -k 6 --niter 4 --metric ip -o mpi_ip.fvecs \
  > mpi_ip.log 2>&1 || { cat mpi_ip.log; exit 1; }
/usr/bin/python3 - <<'PY'
import numpy as np
rows = np.fromfile("mpi_ip.fvecs", dtype=np.float32).reshape(-1, 9)
norms = np.linalg.norm(rows[:, 1:], axis=1)
print("centroid norms:", norms)
assert rows.shape[0] == 6 and np.allclose(norms, 1, atol=1e-5), norms
PY
