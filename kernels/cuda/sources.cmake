# CUDA engine sources (a closed set: one translation unit per responsibility).
set(FLASH_CUDA_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/cuda_engine.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/assign_mma.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/assign_fp32.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/update.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/device_ops.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/autotune.cu)
