# The emulated CUDA build (LORA_CUDA_EMULATE=ON, with LORA_CUDA=OFF): the CUDA
# backend's sources compiled as C++ against dev/cuda-emu instead of nvcc and
# the CUDA runtime, into the normal addon target, plus two libraries beside it:
#   libcuda.so.1       the emulated driver (the addon links it; the backend probes for it)
#   libcublas-emu.so   the emulated cuBLAS, loaded through LORA_CUDA_CUBLAS
# Included from CMakeLists.txt after the addon target is defined.
if(LORA_CUDA_ENABLED)
  message(FATAL_ERROR "LORA_CUDA_EMULATE=ON replaces the CUDA backend: configure with LORA_CUDA=OFF as well")
endif()
find_package(Python3 REQUIRED COMPONENTS Interpreter)

set(_emu ${CMAKE_CURRENT_LIST_DIR})
set(_emu_gen ${CMAKE_CURRENT_BINARY_DIR}/cuda-emu-src/cuda)
file(MAKE_DIRECTORY ${_emu_gen})

# The kernel files, rewritten by transform.py at build time (launches and
# __shared__ declarations); every other line compiles as written.
file(GLOB _emu_cu CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/cuda/*.cu ${CMAKE_SOURCE_DIR}/cuda/*.cuh)
set(_emu_generated)
set(_emu_kernel_sources)
foreach(_src ${_emu_cu})
  get_filename_component(_name ${_src} NAME)
  if(_name MATCHES "\\.cu$")
    set(_out ${_emu_gen}/${_name}.cpp)
    list(APPEND _emu_kernel_sources ${_out})
  else()
    set(_out ${_emu_gen}/${_name})
  endif()
  add_custom_command(OUTPUT ${_out}
    COMMAND ${Python3_EXECUTABLE} ${_emu}/transform.py ${_src} ${_out} cuda/${_name}
    DEPENDS ${_emu}/transform.py ${_src}
    COMMENT "cuda-emu: rewriting cuda/${_name}"
    VERBATIM)
  list(APPEND _emu_generated ${_out})
endforeach()

add_library(lora_cuda_emu_driver SHARED ${_emu}/src/driver.cpp)
target_include_directories(lora_cuda_emu_driver PRIVATE ${_emu}/include)
set_target_properties(lora_cuda_emu_driver PROPERTIES OUTPUT_NAME cuda SOVERSION 1)
target_link_options(lora_cuda_emu_driver PRIVATE -static-libstdc++ -static-libgcc)

add_library(lora_cuda_emu_cublas SHARED ${_emu}/src/cublas.cpp)
target_include_directories(lora_cuda_emu_cublas PRIVATE ${_emu}/include)
target_compile_options(lora_cuda_emu_cublas PRIVATE -O3 -Wall -Wextra -fvisibility=hidden)
target_link_libraries(lora_cuda_emu_cublas PRIVATE lora_cuda_emu_driver)
set_target_properties(lora_cuda_emu_cublas PROPERTIES OUTPUT_NAME cublas-emu BUILD_RPATH_USE_ORIGIN ON)
target_link_options(lora_cuda_emu_cublas PRIVATE -static-libstdc++ -static-libgcc)

# A one-rank NCCL, so that the addon's NCCL path (cuda/nccl.cpp) runs too.
add_library(lora_cuda_emu_nccl SHARED ${_emu}/src/nccl.cpp)
target_compile_options(lora_cuda_emu_nccl PRIVATE -O2 -Wall -Wextra -fvisibility=hidden)
set_target_properties(lora_cuda_emu_nccl PROPERTIES OUTPUT_NAME nccl-emu)
target_link_options(lora_cuda_emu_nccl PRIVATE -static-libstdc++ -static-libgcc)

# No FMA contraction (nvcc contracts, a CPU compiler may or may not): the
# emulated kernels round every operation as written, like the CPU backend.
# Stack clash protection probes every page of a large frame, so a thread that
# overflows its stack hits the guard page below it.
set(_emu_flags -O2 -Wall -Wextra -Wno-unknown-pragmas -ffp-contract=off -fstack-clash-protection -fvisibility=hidden)

# The emulated runtime and the executor of kernels.
add_library(lora_cuda_emu_core OBJECT ${_emu}/src/runtime.cpp ${_emu}/src/exec.cpp)
target_include_directories(lora_cuda_emu_core PUBLIC ${_emu}/include)
target_compile_options(lora_cuda_emu_core PRIVATE ${_emu_flags})
target_link_libraries(lora_cuda_emu_core PUBLIC lora_cuda_emu_driver ${CMAKE_DL_LIBS} Threads::Threads)

add_library(lora_cuda_emu_backend OBJECT
  cuda/cublas.cpp
  cuda/runtime.cpp
  cuda/memory.cpp
  cuda/nccl.cpp
  ${_emu_generated})
# The emulator's headers stand in for the CUDA toolkit's; the rewritten files
# find the unchanged headers of cuda/ (and ../src/) through the include path,
# cuda/ first, as a file of cuda/ would.
target_include_directories(lora_cuda_emu_backend BEFORE PRIVATE ${_emu}/include)
target_include_directories(lora_cuda_emu_backend PRIVATE ${CMAKE_SOURCE_DIR}/cuda src)
target_compile_definitions(lora_cuda_emu_backend PRIVATE LORA_CUDA_ARCHS_STR="emulated")
set_source_files_properties(${_emu_kernel_sources} PROPERTIES COMPILE_DEFINITIONS __CUDACC__)
target_compile_options(lora_cuda_emu_backend PRIVATE ${_emu_flags})
target_link_libraries(lora_cuda_emu_backend PUBLIC lora_cuda_emu_core)

# The emulator's own test (test/selftest.cu): kernels it must run right and bugs it must stop.
set(_emu_selftest ${CMAKE_CURRENT_BINARY_DIR}/cuda-emu-src/selftest.cu.cpp)
add_custom_command(OUTPUT ${_emu_selftest}
  COMMAND ${Python3_EXECUTABLE} ${_emu}/transform.py ${_emu}/test/selftest.cu ${_emu_selftest} dev/cuda-emu/test/selftest.cu
  DEPENDS ${_emu}/transform.py ${_emu}/test/selftest.cu
  COMMENT "cuda-emu: rewriting dev/cuda-emu/test/selftest.cu"
  VERBATIM)
add_executable(cuda_emu_selftest ${_emu_selftest})
set_source_files_properties(${_emu_selftest} PROPERTIES COMPILE_DEFINITIONS __CUDACC__)
target_compile_options(cuda_emu_selftest PRIVATE ${_emu_flags})
target_link_libraries(cuda_emu_selftest PRIVATE lora_cuda_emu_core)
set_target_properties(cuda_emu_selftest PROPERTIES BUILD_RPATH_USE_ORIGIN ON)
if(CMAKE_LIBRARY_OUTPUT_DIRECTORY)  # beside the libraries (cmake-js sets it)
  set_target_properties(cuda_emu_selftest PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${CMAKE_LIBRARY_OUTPUT_DIRECTORY}")
endif()
add_dependencies(${PROJECT_NAME} cuda_emu_selftest)

# The addon: the emulated backend instead of src/cuda_stub.cpp.
get_target_property(_emu_addon_sources ${PROJECT_NAME} SOURCES)
list(REMOVE_ITEM _emu_addon_sources src/cuda_stub.cpp ${CMAKE_SOURCE_DIR}/src/cuda_stub.cpp
  src/distributed/nccl_stub.cpp ${CMAKE_SOURCE_DIR}/src/distributed/nccl_stub.cpp)
set_property(TARGET ${PROJECT_NAME} PROPERTY SOURCES ${_emu_addon_sources})
target_link_libraries(${PROJECT_NAME} PRIVATE lora_cuda_emu_backend lora_cuda_emu_core)
set_target_properties(${PROJECT_NAME} PROPERTIES BUILD_RPATH_USE_ORIGIN ON)
add_dependencies(${PROJECT_NAME} lora_cuda_emu_cublas)
add_dependencies(${PROJECT_NAME} lora_cuda_emu_nccl)
message(STATUS "lora-cuda: CUDA backend EMULATED on the CPU (dev/cuda-emu; no nvcc, no CUDA runtime)")
