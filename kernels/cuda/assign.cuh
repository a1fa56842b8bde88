// FlashAssign launchers: fused distance + running argmin, the n x k distance matrix never
// leaves the chip. One launch covers all problems of a batch.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <stdexcept>

#include "kernels/flash_kmeans.h"

namespace flash::cuda_engine {

/// Whether p is 16-byte aligned (rows loaded 16 bytes at a time).
inline bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

/// A grid size for a launch over every point of a batch: a clear error past the grid's limit.
inline unsigned launch_blocks(int64_t blocks) {
    if (blocks > INT32_MAX) throw std::invalid_argument("faiss-flash: batch * n too large for one launch");
    return unsigned(blocks);
}

/// Slots per point of AssignArgs::candidates: a count and up to kCandidateSlots - 1 indices
/// (more than the filter kernel's four threads per row keep: 4 x 7).
constexpr int kCandidateSlots = 32;

struct AssignArgs {
    const void* x = nullptr;          // (batch, n, d) of dtype
    const void* centroids = nullptr;  // (batch, k, d): fp32 for DType::F32, else dtype-rounded copy
    const float* cnorm = nullptr;     // (batch, k) ||c||^2 of the centroids as used in the product
    const float* xnorm = nullptr;     // (batch, n) ||x||^2 in fp32
    DType dtype = DType::F32;
    Metric metric = Metric::L2;
    int64_t batch = 1, n = 0, d = 0, k = 0;
    int32_t* labels = nullptr;        // (batch, n) out
    float* distances = nullptr;       // (batch, n) out: squared L2 (clamped at 0) or similarity

    // fp32 on tensor cores (set by the entry when split_fp32_supported()): the values of a
    // problem are scaled by a power of two (split_scale.cuh: from xmax for the points, cmax for
    // the centroids) and each scaled v is split into two fp16, hi = fp16(v), lo = fp16(v - hi),
    // stored as rows of 2 * dsplit fp16 [hi (d, zero-padded to dsplit) | lo (same)]; the
    // products hi.hi + hi.lo + lo.hi are exact in fp32, so only the dropped lo.lo term, the
    // residuals (2^-22 relative, plus fp16 underflow) and the accumulation round; the
    // epilogue undoes the scales (exact powers of two).
    const void* xsplit = nullptr;     // (batch, n, 2 * dsplit) fp16
    const void* csplit = nullptr;     // (batch, k, 2 * dsplit) fp16
    int64_t dsplit = 0;
    const float* xmax = nullptr;      // (batch) max |x| of the points (their split scale)
    const float* cmax = nullptr;      // (batch) max_j ||c_j|| (the centroids' split scale, the error bound)
    // Re-check list: points recomputed with fp32 FMA over every centroid. The split products'
    // certificate appends a point whose best and second-best values are closer than twice the
    // error bound of those products (outside it their argmin is the exact one); the filter, a
    // point with more candidates than its kernel keeps. Set wherever xsplit is (Fp32Mode::TF32
    // does not use the split: see half_view).
    uint32_t* recheck_count = nullptr; // (batch), zeroed before the launch
    uint32_t* recheck_list = nullptr;  // (batch, n) point indices within the problem
    // (batch, n) the re-check's merged (value, index) key per list entry: all ones between
    // launches (set so at allocation, reset by the re-check after use).
    unsigned long long* recheck_best = nullptr;
    // The filter (set beside xsplit unless FLASH_EXACT_FILTER=0), in place of the three
    // products: one product of the hi parts (TF32 mode's cost) bounds each value's error from
    // the operands' measured rounding residuals, and keeps per point every centroid within twice
    // that bound of its smallest value: the exact nearest is among them. resolve_candidates
    // then picks it with fp32 FMA dot products (and writes the distance). A point with more
    // candidates than its slots hold goes on the re-check list (fp32 FMA over all centroids).
    const float* xres = nullptr;      // (batch, n) ||x - hi 2^-e|| per point (unscaled units)
    const float* cres = nullptr;      // (batch) max_j ||c_j - hi_j 2^-e||
    uint32_t* candidates = nullptr;   // (batch, n, kCandidateSlots): count (~0u: re-checked), indices

    // Fp32Mode::TF32 (HalfFp32 in resources.cuh): the fp16 problem assigned in this one's place
    // (host pointer; the fp32 distances are recomputed afterwards). Null: not that mode.
    const AssignArgs* half_view = nullptr;

    // fp16 / bf16 passes (wgmma and mma.sync): where the kernel writes a label it also counts
    // it in the update's tile histogram, (batch, count_tiles, k) rows of count_tile points,
    // zero before the launch (SortInverseUpdate::label_counts): the update needs no histogram
    // launch of its own. Integer atomics: the same counts in any order. Null: not counted.
    uint32_t* tile_counts = nullptr;
    int64_t count_tile = 0, count_tiles = 0;

    // The wgmma kernels are launched as dependents of the kernel before them (pdl.cuh). Set:
    // the points and their norms were not written by that kernel (a Lloyd iteration after the
    // first), so each block loads its point tile before waiting for it; else it waits first.
    bool early_points = false;

    // The wgmma block-per-tile kernels, plain (fp16 / bf16, TF32 mode's view) and the fp32
    // filter: labels holds the last assignment's labels (-1: none) when they start. Each row's
    // running minimum then starts from its value for that centroid, computed in the kernel's
    // prologue with fp32 FMA from the same rounded rows and raised by twice the bound on its
    // difference from the tensor-core value: a tile is searched for its minimum's column (the
    // filter: looked at for candidates) only where it holds a value below that, instead of at
    // nearly every early tile. Every value is still computed and compared: the same argmin.
    bool start_from_labels = false;
};

#ifdef __CUDACC__
// Counts label `label` of point `row` of problem b in a.tile_counts (if set).
__device__ __forceinline__ void count_label(const AssignArgs& a, int64_t b, int64_t row, int label) {
    if (a.tile_counts) atomicAdd(a.tile_counts + (b * a.count_tiles + row / a.count_tile) * a.k + label, 1u);
}
#endif

/// Tensor-core path (mma.sync m16n8k16) for fp16 / bf16 inputs, any GPU of sm_80 or later.
void launch_assign_mma(const AssignArgs& a, int variant, cudaStream_t stream);
int assign_mma_variants(const AssignArgs& a);

/// wgmma path (sm_90a): fp16 / bf16 inputs with d <= 256, and split fp32 with d <= 128.
bool wgmma_supported(const AssignArgs& a);
int assign_wgmma_variants(const AssignArgs& a);
void launch_assign_wgmma(const AssignArgs& a, int variant, cudaStream_t stream);

/// fp32 inputs with fp32 FMA products (exact fp32 arithmetic).
void launch_assign_fp32(const AssignArgs& a, cudaStream_t stream);
/// The same products for the points on a.recheck_list only (the certificate's uncertain
/// points): their labels are overwritten. The split path's distances (these points' and the
/// others') come from launch_exact_distances, which launch_assign runs after it.
void launch_assign_fp32_recheck(const AssignArgs& a, cudaStream_t stream);

/// Recomputes a.distances of fp32 points for their labels with fp32 FMA dot products.
void launch_exact_distances(const AssignArgs& a, cudaStream_t stream);

/// After the filter (and the re-check of the points it sent there): each point's label, the
/// candidate with the smallest fp32 FMA value (ties to the lowest index), and its distance.
void launch_resolve_candidates(const AssignArgs& a, cudaStream_t stream);

/// Padded width of the split fp32 rows for dimension d (0 when the split path does not apply).
int64_t split_fp32_width(int64_t d);

/// Number of kernel configurations for this problem (the wgmma ones first).
int assign_variants(const AssignArgs& a);

/// The kernel configuration for a problem: the heuristic, or the autotuner's cached winner
/// when FLASH_AUTOTUNE=1 (see autotune.cu). start_later: the iterations after the first will
/// start from the last labels (AssignArgs::start_from_labels), so the configurations are timed so.
int choose_assign_variant(const AssignArgs& a, cudaStream_t stream, bool start_later = false);

/// Dispatch: the single place that chooses the assignment kernel.
void launch_assign(const AssignArgs& a, int variant, cudaStream_t stream);

} // namespace flash::cuda_engine
