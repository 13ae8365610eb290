#!/usr/bin/env bash
# The CUDA backend on the CPU: builds the addon with the CUDA emulator (dev/cuda-emu) and runs the
# suites that have CUDA parts against it, so that every kernel, launcher and cuBLAS call of cuda/
# runs, and is checked, on a machine without a GPU.
#
#   bash scripts/test-cuda-emu.sh                        # build, self-test, the CUDA suites
#   bash scripts/test-cuda-emu.sh test/cuda.test.ts ...  # build, self-test, then only these (any jest arguments)
#
# Builds into build-emu/ (or $LORA_CUDA_EMU_BUILD_DIR), leaving build/ alone: the addon with the
# emulated backend, the emulated driver (libcuda.so.1), cuBLAS (libcublas-emu.so) and a one-rank NCCL
# (libnccl-emu.so) beside it, and the emulator's self-test, which runs first. jest then loads that
# addon (LORA_CUDA_ADDON), cuBLAS (LORA_CUDA_CUBLAS) and NCCL (LORA_CUDA_NCCL); child processes of the
# tests inherit them.
#
# A kernel bug the emulator detects (a divergent barrier or shuffle, a memory access outside an
# allocation, a thread that exits while others wait, ...) fails the op that launched it with an Error
# that says what happened, and the emulator prints it to stderr. The parity suite (every sample of
# every op of the registry in test/ops/, on the CPU and on the device) runs once per
# thread schedule of the emulator (LORA_CUDA_EMU_SCHEDULE), since a missing barrier shows in some
# orders only.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${LORA_CUDA_EMU_BUILD_DIR:-build-emu}
start=$(date +%s)

echo "test-cuda-emu: building the addon with the emulated CUDA backend into $build_dir/"
mkdir -p "$build_dir"
npx cmake-js compile -O "$build_dir" --CDLORA_CUDA=OFF --CDLORA_CUDA_EMULATE=ON --parallel "$(nproc)" \
  >"$build_dir/build.log" 2>&1 || {
  cat "$build_dir/build.log"
  echo "test-cuda-emu: the emulated build failed" >&2
  exit 1
}
out="$(cd "$build_dir" && pwd)/Release"
for f in lora_cuda.node libcublas-emu.so libnccl-emu.so libcuda.so.1 cuda_emu_selftest; do
  [ -e "$out/$f" ] || { echo "test-cuda-emu: $out/$f was not built" >&2; exit 1; }
done
echo "test-cuda-emu: built in $(($(date +%s) - start)) s"

echo "test-cuda-emu: the emulator's self-test"
"$out/cuda_emu_selftest" "$out/libcublas-emu.so"

export LORA_CUDA_ADDON="$out/lora_cuda.node"
export LORA_CUDA_CUBLAS="$out/libcublas-emu.so"
export LORA_CUDA_NCCL="$out/libnccl-emu.so"
unset LORA_CUDA_SYNC LORA_CUDA_EMU_SCHEDULE LORA_CUDA_EMU_LAUNCH_ERROR

# The suites below must see the emulated GPU, not skip their CUDA parts.
node -r ./test/helpers/ts-register.js -e '
  const { backendInfo } = require("./lib");
  const c = backendInfo().cuda;
  if (!c.available || c.devices[0].name !== "lora-cuda CUDA emulator") {
    console.error("test-cuda-emu: the emulated CUDA device is not available: " + (c.reason || JSON.stringify(c.devices)));
    process.exit(1);
  }
'

# Each jest run also writes its results as JSON, so that the failures of every run can be listed
# once more at the very end: the later schedule runs go on after a failure and would otherwise push
# it out of the last screens of a CI log.
results="$build_dir/jest-results"
rm -rf "$results"
mkdir -p "$results"
status=0
if [ $# -gt 0 ]; then
  npx jest --ci --json --outputFile="$results/1-arguments.json" "$@" || status=$?
else
  # Every suite with parts that run only when CUDA is available.
  npx jest --ci --json --outputFile="$results/1-suites.json" \
    test/cuda.test.ts test/cuda-half.test.ts test/cuda-probe.test.ts test/soak.test.ts test/bad-input.test.ts test/errors.test.ts test/tensor.test.ts \
    test/cli-finetune.test.ts test/gradcheck.test.ts test/distributed.test.ts test/attention.test.ts test/memory.test.ts test/swiglu.test.ts \
    || status=$?
  n=2
  for schedule in reverse warp-ahead reverse,warp-ahead; do
    echo "test-cuda-emu: the parity suite again with LORA_CUDA_EMU_SCHEDULE=$schedule"
    LORA_CUDA_EMU_SCHEDULE=$schedule npx jest --ci --json --outputFile="$results/$n-schedule-${schedule/,/+}.json" \
      test/cuda.test.ts || status=$?
    n=$((n + 1))
  done
fi
echo "test-cuda-emu: $(($(date +%s) - start)) s in all"
if [ "$status" -ne 0 ]; then
  node scripts/jest-failures.js "$results"/*.json >&2 || true
  echo "test-cuda-emu: jest failed with the emulated CUDA backend (exit $status)" >&2
  exit "$status"
fi
echo "test-cuda-emu: all passed"
