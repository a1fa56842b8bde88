// GPU tests skip with a printed reason when no CUDA device is visible (CI has none).
#pragma once

#include <gtest/gtest.h>

#include "kernels/cuda/cuda_engine.h"

#define REQUIRE_GPU()                                                                                  \
    do {                                                                                               \
        if (flash::cuda_engine::device_count() == 0) GTEST_SKIP() << "no CUDA device visible: GPU test skipped"; \
    } while (0)
