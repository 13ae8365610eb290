#!/usr/bin/env bash
# The native core and the binding under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash scripts/test-asan.sh                         # build, then the whole jest suite
#   bash scripts/test-asan.sh test/fuzz.test.ts ...   # build, then only these suites (any jest arguments)
#
# Builds the addon with -DLORA_SANITIZE=ON into its own directory (build-asan/, or $LORA_ASAN_BUILD_DIR),
# so the normal build/ is left alone, and runs jest with that addon (LORA_CUDA_ADDON) and the sanitizer
# runtimes preloaded into node (node itself is not instrumented, so the runtimes must come first).
# Child processes started by the tests inherit all of this.
#
# Every finding is fatal (-fno-sanitize-recover, halt_on_error): the process exits with 86 (ASan) or
# 87 (UBSan), which fails the test that ran it, or jest. ASan writes its reports to files under the
# build directory (the tests compare the stderr of child processes, and the out-of-memory tests make
# ASan print warnings); they are scanned and printed at the end. UBSan's runtime here does not honour
# log_path, so its reports appear on stderr. Leak detection is off: node does not free everything at
# exit. Allocations too large for the machine return null instead of aborting, so the out-of-memory
# tests see what they see in a normal build (an ERR_OUT_OF_MEMORY error).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${LORA_ASAN_BUILD_DIR:-build-asan}
cxx=${CXX:-g++}

echo "test-asan: building the addon with ASan and UBSan into $build_dir/"
mkdir -p "$build_dir"
npx cmake-js compile -O "$build_dir" --CDLORA_SANITIZE=ON --CDLORA_CUDA=OFF >"$build_dir/build.log" 2>&1 || {
  cat "$build_dir/build.log"
  echo "test-asan: the sanitizer build failed" >&2
  exit 1
}
addon="$PWD/$build_dir/Release/lora_cuda.node"
[ -f "$addon" ] || { echo "test-asan: $addon was not built" >&2; exit 1; }

runtimes=()
for lib in libasan.so libubsan.so; do
  f=$("$cxx" -print-file-name="$lib")
  # -print-file-name echoes the bare name when it finds nothing.
  if [ "$f" = "$lib" ] || [ ! -e "$f" ]; then
    echo "test-asan: $cxx has no $lib (on Debian it comes with g++; install libasan8 libubsan1)" >&2
    exit 1
  fi
  runtimes+=("$(readlink -f "$f")")
done

logs="$PWD/$build_dir/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"

export LORA_CUDA_ADDON="$addon"
export LD_PRELOAD="${runtimes[*]}${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:exitcode=86:detect_stack_use_after_return=0:log_path=$logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$logs/ubsan"

# The addon the tests load must be the instrumented one.
node -r ./test/helpers/ts-register.js -e '
  require("./lib/native");
  const maps = require("fs").readFileSync("/proc/self/maps", "utf8");
  if (!maps.includes(process.env.LORA_CUDA_ADDON)) { console.error("test-asan: lib/native did not load " + process.env.LORA_CUDA_ADDON); process.exit(1); }
  if (!/libasan/.test(maps)) { console.error("test-asan: the ASan runtime is not loaded"); process.exit(1); }
'

status=0
npx jest --ci "$@" || status=$?

# Reports of errors (not the "failed to allocate" warnings of the out-of-memory tests).
found=0
for f in "$logs"/*; do
  [ -e "$f" ] || continue
  if grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$f"; then
    found=1
    echo "==== $f"
    cat "$f"
  fi
done
if [ "$found" -ne 0 ]; then
  echo "test-asan: the sanitizers reported errors (above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "test-asan: jest failed under the sanitizers (exit $status)" >&2
  exit "$status"
fi
echo "test-asan: no sanitizer errors"
