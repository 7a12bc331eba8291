# CUDA build flags for this package (included before llama.cpp is added):
#   - machine code (SASS) for the named architectures: "90" becomes "90-real". ggml's default list without
#     GGML_NATIVE gives Hopper only PTX (90-virtual), compiled by the driver at first start and never tuned for it.
#   - no architecture named: the GPUs this machine has (nvidia-smi), else ggml's portable default list.
#   - NCCL off: one process drives one GPU here (multi-GPU runs start one worker per device), so ggml's
#     tensor-parallel NCCL path is never used, and a build should not depend on whether NCCL happens to be installed.
if(NOT GGML_CUDA)
  return()
endif()
set(GGML_CUDA_NCCL OFF CACHE BOOL "NCCL for ggml's multi-GPU tensor parallelism (unused: one GPU per process)")

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "")
  find_program(MF_NVIDIA_SMI nvidia-smi)
  if(MF_NVIDIA_SMI)
    execute_process(COMMAND "${MF_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                    OUTPUT_VARIABLE _mf_caps RESULT_VARIABLE _mf_rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(_mf_rc EQUAL 0 AND _mf_caps MATCHES "^[0-9]")
      string(REPLACE "." "" _mf_caps "${_mf_caps}")
      string(REPLACE "\n" ";" _mf_caps "${_mf_caps}")
      list(REMOVE_DUPLICATES _mf_caps)
      set(CMAKE_CUDA_ARCHITECTURES "${_mf_caps}")
      message(STATUS "CUDA architectures of this machine's GPUs: ${_mf_caps}")
    endif()
  endif()
endif()

if(DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "")
  set(_mf_archs "")
  foreach(_a IN LISTS CMAKE_CUDA_ARCHITECTURES)
    if(_a MATCHES "^[0-9]+[af]?$")
      list(APPEND _mf_archs "${_a}-real")
    else()
      list(APPEND _mf_archs "${_a}")  # already -real / -virtual, or "native" / "all"
    endif()
  endforeach()
  set(CMAKE_CUDA_ARCHITECTURES "${_mf_archs}" CACHE STRING "CUDA architectures (SASS for each)" FORCE)
  message(STATUS "CUDA architectures: ${CMAKE_CUDA_ARCHITECTURES}")
endif()
