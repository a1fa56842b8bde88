// The bulk tensor copy engine (TMA, sm_90): tensor maps of 2-byte (batch, rows, width)
// arrays, tile copies into 128-byte swizzled shared memory, and the mbarriers they complete on.
// One thread issues a whole tile; the threads that read it wait on the tile's mbarrier.
#pragma once

#include <cuda.h> // CUtensorMap and its enums (the driver entry point is found at run time)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace flash::cuda_engine {

// ---- device side --------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_addr(bar)), "r"(arrivals) : "memory");
}

// Makes initialised mbarriers visible to the copy engine (before the first copy names them).
__device__ __forceinline__ void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

// The calling thread's arrival, announcing `bytes` of copies that complete on the barrier.
__device__ __forceinline__ void mbarrier_arrive_expect(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_addr(bar)), "r"(bytes)
                 : "memory");
}

// The calling thread's arrival (release: its earlier shared-memory writes are seen by the waiters).
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_addr(bar)) : "memory");
}

// An arrival once the calling thread's earlier cp.async copies have landed (counted in the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void mbarrier_arrive_after_cp_async(uint64_t* bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_addr(bar)) : "memory");
}

// Waits until the barrier's phase of the given parity (0 for its first use, 1, 0, ...) completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    const uint32_t addr = shared_addr(bar);
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(addr), "r"(parity)
                     : "memory");
    } while (!done);
}

// Box (x0, y0, z) of the tensor map into shared memory at dst, completing on bar. Elements
// past the tensor's bounds arrive as zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int x0, int y0, int z) {
    asm volatile(
            "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(
                    shared_addr(dst)),
            "l"(reinterpret_cast<uint64_t>(map)), "r"(shared_addr(bar)), "r"(x0), "r"(y0), "r"(z)
            : "memory");
}

// ---- host side ----------------------------------------------------------------------------

using EncodeTiled = PFN_cuTensorMapEncodeTiled_v12000;

// The driver's tensor-map encoder, looked up once (null where the driver lacks it).
inline EncodeTiled tile_map_encoder() {
    static const EncodeTiled encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
                    cudaSuccess ||
            found != cudaDriverEntryPointSuccess)
            return static_cast<EncodeTiled>(nullptr);
        return reinterpret_cast<EncodeTiled>(fn);
    }();
    return encode;
}

// Whether the copy engine can take a (batch, rows, width) array of 2-byte elements at base,
// rows ld elements apart: widths and strides multiples of 16 bytes, a 16-byte aligned base,
// sizes within the map's limits, and an encoder in the driver. Where it cannot, the caller
// loads tiles with ordinary copies.
inline bool tile_map_possible(const void* base, int64_t batch, int64_t rows, int64_t width, int64_t ld) {
    return tile_map_encoder() && width % 8 == 0 && ld % 8 == 0 && ld >= width &&
           (reinterpret_cast<uintptr_t>(base) & 15) == 0 && rows > 0 && batch > 0 && rows <= INT32_MAX &&
           batch <= INT32_MAX;
}

// A tensor map over such an array (fp16 or bf16, row-major), copied in boxes of 64
// columns x box_rows rows into the 128-byte swizzled layout (16-byte chunk c of row r at chunk
// c ^ (r % 8) within each 8-row group). False where tile_map_possible is false or the driver
// refuses the map.
inline bool make_tile_map(CUtensorMap* map, const void* base, bool bf16, int64_t batch, int64_t rows, int64_t width,
                          int64_t ld, int box_rows) {
    if (!tile_map_possible(base, batch, rows, width, ld)) return false;
    const cuuint64_t dims[3] = {cuuint64_t(width), cuuint64_t(rows), cuuint64_t(batch)};
    const cuuint64_t strides[2] = {cuuint64_t(ld) * 2, cuuint64_t(ld) * 2 * cuuint64_t(rows)};
    const cuuint32_t box[3] = {64, cuuint32_t(box_rows), 1};
    const cuuint32_t unit[3] = {1, 1, 1};
    return tile_map_encoder()(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
                              const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

} // namespace flash::cuda_engine
