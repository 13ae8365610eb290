# cuda/architectures.cmake on its own, for test/cuda-architectures.test.ts:
#   cmake -DNVCC=<nvcc> -DWANTED=<list> -DEXPLICIT=ON|OFF -P test/helpers/cuda-architectures.cmake
# asks NVCC what it compiles for, selects from WANTED as CMakeLists.txt does,
# and prints the outcome as one line of JSON on stderr.
cmake_minimum_required(VERSION 3.18)
include(${CMAKE_CURRENT_LIST_DIR}/../../cuda/architectures.cmake)
lora_cuda_nvcc_targets("${NVCC}" version codes archs)
lora_cuda_select_architectures("${WANTED}" ${EXPLICIT} "${version}" "${codes}" "${archs}" list note error)
set(json "{")
foreach(key version codes archs list note error)
  set(v "${${key}}")
  string(REPLACE "\\" "\\\\" v "${v}")
  string(REPLACE "\"" "\\\"" v "${v}")
  if(NOT key STREQUAL "version")
    string(APPEND json ",")
  endif()
  string(APPEND json "\"${key}\":\"${v}\"")
endforeach()
string(APPEND json "}")
message("${json}")
