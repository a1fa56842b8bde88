// Building blocks of the distributed engine, declared for its tests (tests/mpi_kmeans_check).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <vector>

namespace flash::distributed::detail {

/// Largest count passed to one MPI call: counts are int, and some transports mishandle
/// messages over 2 GiB, so long buffers go in pieces of 2^26 elements (512 MiB of doubles).
constexpr int64_t kMaxMpiCount = int64_t(1) << 26;

/// MPI_Allreduce(MPI_IN_PLACE, buf, n, type, op) for any 64-bit n, in pieces of at most
/// max_count elements (every rank must pass the same n and max_count).
void allreduce_in_place(MPI_Comm comm, void* buf, int64_t n, MPI_Datatype type, MPI_Op op,
                        int64_t max_count = kMaxMpiCount);

/// MPI_Bcast(buf, n, type, root) for any 64-bit n, in pieces of at most max_count elements.
void bcast(MPI_Comm comm, void* buf, int64_t n, MPI_Datatype type, int root, int64_t max_count = kMaxMpiCount);

/// The first m entries of faiss_rand_perm(n, seed) (FAISS' rand_perm), 0 <= m <= n, in
/// O(m) memory when m is small against n: Fisher-Yates fixes position i at step i, so only
/// the first m steps run, with the displaced entries kept in a hash map.
std::vector<int64_t> rand_perm_prefix(int64_t n, int64_t m, int64_t seed);

} // namespace flash::distributed::detail
