# Resolves the llama.cpp source tree to build against, in this order:
#   1. LLAMA_CPP_DIR (CMake variable, else environment variable): a llama.cpp checkout the user names;
#   2. third_party/llama.cpp, if it holds a tree (e.g. a git submodule the user added);
#   3. the pinned registry package (third_party/llama-cpp.json), fetched by cmake/fetch_llama_cpp.py.
# Sets LLAMA_CPP_SOURCE_DIR, MF_LLAMA_CPP_COMMIT (short hash or "unknown") and MF_LLAMA_CPP_ORIGIN.

set(LLAMA_CPP_DIR "" CACHE PATH "llama.cpp checkout to build against (empty: third_party/llama.cpp, else the pin)")
set(_mf_pin "${PROJECT_SOURCE_DIR}/third_party/llama-cpp.json")
file(READ "${_mf_pin}" _mf_pin_json)
string(JSON _mf_pin_commit GET "${_mf_pin_json}" llama_cpp_commit)
string(JSON _mf_pin_version GET "${_mf_pin_json}" version)
string(JSON _mf_pin_package GET "${_mf_pin_json}" package)

function(_mf_git_commit dir out)
  set(${out} "unknown" PARENT_SCOPE)
  find_package(Git QUIET)
  if(GIT_FOUND AND EXISTS "${dir}/.git")
    execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${dir}" rev-parse --short=7 HEAD
                    OUTPUT_VARIABLE _c OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
    if(_rc EQUAL 0 AND _c)
      set(${out} "${_c}" PARENT_SCOPE)
    endif()
  endif()
endfunction()

if(NOT LLAMA_CPP_DIR AND DEFINED ENV{LLAMA_CPP_DIR})
  set(LLAMA_CPP_DIR "$ENV{LLAMA_CPP_DIR}")
endif()

if(LLAMA_CPP_DIR)
  get_filename_component(LLAMA_CPP_SOURCE_DIR "${LLAMA_CPP_DIR}" ABSOLUTE)
  set(MF_LLAMA_CPP_ORIGIN "LLAMA_CPP_DIR")
  _mf_git_commit("${LLAMA_CPP_SOURCE_DIR}" MF_LLAMA_CPP_COMMIT)
elseif(EXISTS "${PROJECT_SOURCE_DIR}/third_party/llama.cpp/CMakeLists.txt")
  set(LLAMA_CPP_SOURCE_DIR "${PROJECT_SOURCE_DIR}/third_party/llama.cpp")
  set(MF_LLAMA_CPP_ORIGIN "third_party/llama.cpp")
  _mf_git_commit("${LLAMA_CPP_SOURCE_DIR}" MF_LLAMA_CPP_COMMIT)
else()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/cmake/fetch_llama_cpp.py" --pin "${_mf_pin}"
    OUTPUT_VARIABLE _mf_out OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _mf_rc)
  if(NOT _mf_rc EQUAL 0)
    message(FATAL_ERROR "Could not fetch ${_mf_pin_package}==${_mf_pin_version} with pip (see above). "
                        "Set LLAMA_CPP_DIR to a llama.cpp checkout to build offline.")
  endif()
  string(REGEX REPLACE ".*\n" "" LLAMA_CPP_SOURCE_DIR "${_mf_out}")
  set(MF_LLAMA_CPP_ORIGIN "${_mf_pin_package}==${_mf_pin_version} sdist")
  set(MF_LLAMA_CPP_COMMIT "${_mf_pin_commit}")
endif()

foreach(_f CMakeLists.txt tools/mtmd/mtmd.h include/llama.h)
  if(NOT EXISTS "${LLAMA_CPP_SOURCE_DIR}/${_f}")
    message(FATAL_ERROR "${LLAMA_CPP_SOURCE_DIR} is not a llama.cpp tree with mtmd (missing ${_f})")
  endif()
endforeach()
message(STATUS "llama.cpp: ${LLAMA_CPP_SOURCE_DIR} (${MF_LLAMA_CPP_ORIGIN}, commit ${MF_LLAMA_CPP_COMMIT})")

# The patch queue (third_party/patches/*.patch, see third_party/README.md): applied in name order to a copy of the
# tree in the cache (cmake/patch_llama_cpp.py; the resolved tree, shared by every build, is never changed). A tree
# that already holds the patches is used as it is; a patch that does not apply stops here with its name.
file(GLOB _mf_patches "${PROJECT_SOURCE_DIR}/third_party/patches/*.patch")
if(_mf_patches)
  set(_mf_patch_args --tree "${LLAMA_CPP_SOURCE_DIR}" --patches "${PROJECT_SOURCE_DIR}/third_party/patches")
  if(MF_LLAMA_CPP_ORIGIN STREQUAL "LLAMA_CPP_DIR" OR MF_LLAMA_CPP_ORIGIN STREQUAL "third_party/llama.cpp")
    list(APPEND _mf_patch_args --user-tree)
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/cmake/patch_llama_cpp.py" ${_mf_patch_args}
    OUTPUT_VARIABLE _mf_patched OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_VARIABLE _mf_patch_err
    RESULT_VARIABLE _mf_patch_rc)
  if(NOT _mf_patch_rc EQUAL 0)
    message(FATAL_ERROR "Could not apply the llama.cpp patches of third_party/patches:\n${_mf_patch_err}")
  endif()
  message(STATUS "${_mf_patch_err}")
  string(REGEX REPLACE ".*\n" "" LLAMA_CPP_SOURCE_DIR "${_mf_patched}")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_mf_patches})
  message(STATUS "llama.cpp with patches: ${LLAMA_CPP_SOURCE_DIR}")
endif()
