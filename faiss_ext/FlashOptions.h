// Engine choice shared by every FAISS-facing class.
#pragma once

#include "kernels/flash_kmeans.h"

namespace faiss_flash {

struct FlashOptions {
    flash::Backend backend = flash::Backend::Auto; ///< Auto: CUDA when a GPU is visible
    int cuda_device = -1;                          ///< -1: device 0
    flash::Fp32Mode fp32_mode = flash::Fp32Mode::Exact;
};

} // namespace faiss_flash
