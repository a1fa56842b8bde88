// Engine choice shared by every FAISS-facing class.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace faiss_flash {

struct FlashOptions {
    flash::Backend backend = flash::Backend::Auto; ///< Auto: CUDA when a GPU is visible
    int cuda_device = -1;                          ///< -1: device 0
    flash::Fp32Mode fp32_mode = flash::Fp32Mode::Exact;
    /// Several GPUs and data larger than the GPU (see flash::LloydOptions): shard the
    /// points over these devices, stream what does not fit, cap the memory per device,
    /// send fp32 points as fp16 / bf16, rows per streamed piece.
    std::vector<int> cuda_devices;
    flash::Streaming streaming = flash::Streaming::Auto;
    int64_t device_memory_limit = 0;
    flash::DType transfer_dtype = flash::DType::F32;
    int64_t stream_piece_rows = 0;
    /// When set, receives how the sharded / streaming engine placed the points (the last
    /// run's, with nredo > 1); left as it was when another engine ran.
    flash::Placement* placement = nullptr;
    /// Resumable training (see flash::LloydOptions): checkpoint file, written every
    /// checkpoint_every iterations; with nredo > 1 each redo r uses path + ".redo<r>".
    std::string checkpoint_path;
    int checkpoint_every = 0;
    /// Ctrl-C stops training between iterations with flash::Interrupted.
    bool stop_on_sigint = false;
};

/// Copies the engine choice and placement options into the engine's options (the
/// checkpoint fields are per run and stay with the caller).
inline void apply_engine_options(const FlashOptions& f, flash::LloydOptions& o) {
    o.backend = f.backend;
    o.cuda_device = f.cuda_device;
    o.fp32_mode = f.fp32_mode;
    o.cuda_devices = f.cuda_devices;
    o.streaming = f.streaming;
    o.device_memory_limit = f.device_memory_limit;
    o.transfer_dtype = f.transfer_dtype;
    o.stream_piece_rows = f.stream_piece_rows;
    o.placement = f.placement;
}

} // namespace faiss_flash
