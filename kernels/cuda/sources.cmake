# CUDA engine sources (a closed set: one translation unit per responsibility).
set(FLASH_CUDA_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/cuda_engine.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/assign_mma.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/assign_fp32.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/update.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/device_ops.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/autotune.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/partial_sums.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/host_staging.cpp)

# The wgmma kernels need the architecture-specific target sm_90a (plain sm_90 rejects
# wgmma), so they build as their own object library for that target only; the host code
# launches them on compute capability 9.0 devices only (wgmma_supported).
add_library(flash_cuda_sm90a OBJECT ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/assign_wgmma.cu)
set_target_properties(flash_cuda_sm90a PROPERTIES CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
target_include_directories(flash_cuda_sm90a PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(flash_cuda_sm90a PRIVATE -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
  -Xcompiler=-Wall)
list(APPEND FLASH_CUDA_SOURCES $<TARGET_OBJECTS:flash_cuda_sm90a>)
