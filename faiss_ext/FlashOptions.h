// Engine choice shared by every FAISS-facing class.
#pragma once

#include <string>

#include "kernels/flash_kmeans.h"

namespace faiss_flash {

struct FlashOptions {
    flash::Backend backend = flash::Backend::Auto; ///< Auto: CUDA when a GPU is visible
    int cuda_device = -1;                          ///< -1: device 0
    flash::Fp32Mode fp32_mode = flash::Fp32Mode::Exact;
    /// Resumable training (see flash::LloydOptions): checkpoint file, written every
    /// checkpoint_every iterations; with nredo > 1 each redo r uses path + ".redo<r>".
    std::string checkpoint_path;
    int checkpoint_every = 0;
    /// Ctrl-C stops training between iterations with flash::Interrupted.
    bool stop_on_sigint = false;
};

} // namespace faiss_flash
