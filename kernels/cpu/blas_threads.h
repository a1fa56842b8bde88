// Runs BLAS single-threaded inside our own OpenMP parallel regions.
#pragma once

namespace flash::cpu {

/// While alive, OpenBLAS (when it is the BLAS in use) runs each call on the calling thread
/// only, so that our OpenMP threads each own a tile. Restores the previous setting.
/// If the BLAS cannot be controlled, active() is false and callers should let BLAS thread.
class ScopedSingleThreadedBlas {
  public:
    ScopedSingleThreadedBlas();
    ~ScopedSingleThreadedBlas();
    ScopedSingleThreadedBlas(const ScopedSingleThreadedBlas&) = delete;
    ScopedSingleThreadedBlas& operator=(const ScopedSingleThreadedBlas&) = delete;
    bool active() const { return previous_ > 0; }

  private:
    int previous_ = 0;
};

/// C = A * B^T for row-major A (m, kdim), B (n, kdim), C (m, n), scaled by alpha.
void gemm_abt(int m, int n, int kdim, float alpha, const float* a, const float* b, float* c);

} // namespace flash::cpu
