#include "kernels/cpu/blas_threads.h"

#include <dlfcn.h>

extern "C" {
// Fortran BLAS, as FAISS calls it.
int sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
           const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
           const float* beta, float* c, const int* ldc);
}

namespace flash::cpu {

namespace {

using get_fn = int (*)();
using set_fn = void (*)(int);

struct OpenBlasControl {
    get_fn get = nullptr;
    set_fn set = nullptr;
    OpenBlasControl() {
        get = reinterpret_cast<get_fn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
        set = reinterpret_cast<set_fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    }
};

const OpenBlasControl& control() {
    static const OpenBlasControl c;
    return c;
}

} // namespace

ScopedSingleThreadedBlas::ScopedSingleThreadedBlas() {
    const auto& c = control();
    if (c.get && c.set) {
        previous_ = c.get();
        if (previous_ > 1) c.set(1);
        if (previous_ < 1) previous_ = 1;
    }
}

ScopedSingleThreadedBlas::~ScopedSingleThreadedBlas() {
    const auto& c = control();
    if (previous_ > 1) c.set(previous_);
}

void gemm_abt(int m, int n, int kdim, float alpha, const float* a, const float* b, float* c) {
    // Column-major view: C^T (n, m) = B (n, kdim) * A^T, i.e. sgemm("T", "N") on B and A.
    const float beta = 0;
    sgemm_("T", "N", &n, &m, &kdim, &alpha, b, &kdim, a, &kdim, &beta, c, &n);
}

} // namespace flash::cpu
