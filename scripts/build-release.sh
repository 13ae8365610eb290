#!/usr/bin/env bash
# The release build of the addon (the binary in prebuilds/): the CUDA backend with every default GPU
# architecture, built in a Debian 11 "bullseye" chroot (glibc 2.31, g++ 10, CMake 3.18) so that it
# loads on glibc 2.28 and newer.
#
# A binary needs the newest version of each glibc function it calls in the glibc it was linked
# against, so the floor is set by building against an old glibc: bullseye is the oldest Debian release
# the regular mirrors still serve. The few functions glibc 2.29-2.31 versioned anew (exp, log, pow...)
# are bound to their older versions by scripts/glibc-2.28.h, force-included into every translation
# unit; libstdc++, libgcc and the CUDA runtime are linked statically (CMakeLists.txt). The result is
# checked with scripts/glibc-ceiling.sh. The host's toolchain and glibc play no part; the CUDA toolkit
# is the host's, mounted read-only (nvcc runs on old distributions and supports g++ 10).
#
#   sudo bash scripts/build-release.sh     ->  build-release/Release/lora_cuda.node
#
# npm run prebuild runs it (through scripts/prebuild-node-gyp.js), then strips the binary into prebuilds/.
# Needs: root (debootstrap, chroot and bind mounts, in a private mount namespace that vanishes with the
# build), nvcc from a self-contained CUDA 12 or 13 toolkit directory (/usr/local/cuda-13.0 and the like),
# `npm install` done (the Node-API headers come from node_modules, so no Node download), and on the
# first run the Debian mirror (about 600 MB, a minute; kept for later runs).
#
# Environment:
#   LORA_CUDA_RELEASE_CHROOT   where the chroot lives (default ~/.cache/lora-cuda/debian-bullseye-amd64)
#   LORA_CUDA_RELEASE_MIRROR   the Debian mirror (default http://deb.debian.org/debian; the download
#                              is checked against the Debian archive keyring). When bullseye leaves the
#                              regular mirrors for the archive, http://archive.debian.org/debian
#   CUDA_HOME                  the CUDA toolkit (default: where the nvcc on PATH lives)
#   LORA_CUDA_RELEASE_JOBS     parallel compile jobs (default: the number of CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

suite=bullseye
packages=g++,make,cmake
mirror=${LORA_CUDA_RELEASE_MIRROR:-http://deb.debian.org/debian}
chroot_dir=${LORA_CUDA_RELEASE_CHROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-cuda/debian-$suite-amd64}
jobs=${LORA_CUDA_RELEASE_JOBS:-$(nproc)}
out=$root/build-release
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
stamp_text="debian $suite $packages"

say() { echo "build-release: $*"; }
die() { echo "build-release: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (this is $(uname -m))"
[ "$(id -u)" = 0 ] || die "needs root for debootstrap, chroot and bind mounts: run it with sudo (sudo npm run prebuild)"
for tool in unshare mount chroot objdump; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (util-linux, binutils)"
done

# ---- the CUDA toolkit: where the nvcc on PATH lives (it may be a wrapper script: ask nvcc itself).
cuda_home=${CUDA_HOME:-}
if [ -z "$cuda_home" ]; then
  command -v nvcc >/dev/null 2>&1 || die "nvcc is not on PATH and CUDA_HOME is not set: the release binary carries the CUDA backend"
  cuda_home=$(nvcc --dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)
  [ -n "$cuda_home" ] || die "could not tell where nvcc's toolkit is; set CUDA_HOME"
fi
cuda_home=$(realpath "$cuda_home")
[ -x "$cuda_home/bin/nvcc" ] || die "$cuda_home/bin/nvcc does not exist (CUDA_HOME=$cuda_home)"
case "$cuda_home" in
  / | /usr | /usr/local) die "the CUDA toolkit at $cuda_home is not a directory of its own (a distribution's packaged CUDA); install NVIDIA's toolkit (/usr/local/cuda-13.0 or the like) and set CUDA_HOME" ;;
esac
say "CUDA toolkit $cuda_home ($("$cuda_home/bin/nvcc" --version | sed -n 's/^Cuda compilation tools, //p'))"

# ---- the Node-API headers, copied into the build directory so that the chroot sees them.
# The packages cmake-js would use: node-api-headers (its dependency) and node-addon-api.
headers_of() {
  node -e 'const p = require("path"); const from = p.dirname(require.resolve(process.argv[1] + "/package.json"));
    console.log(p.dirname(require.resolve(process.argv[2] + "/package.json", { paths: [from] })))' "$@" 2>/dev/null
}
node_api=$(headers_of cmake-js node-api-headers)/include ||
  die "cmake-js or node-api-headers is not installed: run npm install first"
addon_api=$(headers_of cmake-js node-addon-api) ||
  die "node-addon-api is not installed: run npm install first"
rm -rf "$out/node-api"
mkdir -p "$out/node-api/include" "$out/node-api/node-addon-api"
cp "$node_api"/*.h "$out/node-api/include/"
cp "$addon_api"/*.h "$out/node-api/node-addon-api/"

# ---- the chroot: made once; a stamp written last marks it complete.
make_chroot() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing; install it with the system's package manager"
    say "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      die "could not install debootstrap (apt-get install debootstrap)"
  fi
  [ -f "$keyring" ] || die "$keyring is missing, so the download cannot be verified: install debian-archive-keyring"
  local tmp=$chroot_dir.partial log=$chroot_dir.log attempt
  mkdir -p "$(dirname "$chroot_dir")"
  for attempt in 1 2; do
    rm -rf --one-file-system "$tmp"
    say "creating the Debian $suite chroot in $chroot_dir from $mirror (attempt $attempt of 2; about a minute)"
    # In a mount namespace of its own, so that nothing debootstrap mounts in the target outlives it.
    if unshare --mount --propagation private \
        debootstrap --variant=minbase --include="$packages" --keyring="$keyring" "$suite" "$tmp" "$mirror" >"$log" 2>&1; then
      echo "$stamp_text" >"$tmp/.lora-cuda-release"
      rm -rf --one-file-system "$chroot_dir"
      mv "$tmp" "$chroot_dir"
      return 0
    fi
    echo "build-release: debootstrap failed; the end of its log ($log):" >&2
    tail -n 12 "$log" >&2
    [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 12 "$tmp/debootstrap/debootstrap.log" >&2
    [ "$attempt" = 2 ] || sleep 20
  done
  rm -rf --one-file-system "$tmp"
  die "could not create the Debian $suite chroot: is $mirror reachable? (LORA_CUDA_RELEASE_MIRROR names another mirror)"
}
if [ "$(cat "$chroot_dir/.lora-cuda-release" 2>/dev/null)" != "$stamp_text" ]; then
  make_chroot
fi
say "chroot $chroot_dir: $(chroot "$chroot_dir" sh -c 'ldd --version | head -n1; g++ --version | head -n1; cmake --version | head -n1' | tr '\n' ';' | sed 's/;$//; s/;/, /g')"

# ---- commands in the chroot: the sources at /lora-cuda, the toolkit at /usr/local/cuda (read-only), the
# host's node at /opt/host-node/node (and node_modules where its symbolic link points, if it is one).
# The mounts live in a private mount namespace, gone when the command ends however it ends.
node_bin=$(realpath "$(command -v node)")
modules=$(realpath node_modules)
[ "$modules" != "$root/node_modules" ] || modules=
in_chroot() {
  unshare --mount --propagation private bash -euc '
    cr=$1 src=$2 cuda=$3 node=$4 modules=$5 script=$6
    mkdir -p "$cr/lora-cuda" "$cr/usr/local/cuda" "$cr/proc" "$cr/opt/host-node"
    touch "$cr/opt/host-node/node"
    mount --bind "$src" "$cr/lora-cuda"
    if [ -n "$modules" ]; then mkdir -p "$cr$modules"; mount --bind "$modules" "$cr$modules"; fi
    mount --bind "$cuda" "$cr/usr/local/cuda"
    mount -o remount,bind,ro "$cr/usr/local/cuda"
    mount --bind "$node" "$cr/opt/host-node/node"
    mount -t proc proc "$cr/proc"
    exec chroot "$cr" /usr/bin/env -i PATH=/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
      /bin/bash -euc "$script"
  ' in-chroot "$chroot_dir" "$root" "$cuda_home" "$node_bin" "$modules" "$1"
}

# ---- configure and build. The compile flags are those cmake-js passes, plus the glibc 2.28 header.
compat=/lora-cuda/scripts/glibc-2.28.h
say "building in build-release/ ($jobs jobs)"
# The build runs as root; hand the results to whoever owns the checkout.
owner=$(stat -c %u:%g "$root")
in_chroot "
cd /lora-cuda
cmake -S . -B build-release -G 'Unix Makefiles' \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=/lora-cuda/build-release/Release \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
  '-DCMAKE_JS_INC=/lora-cuda/build-release/node-api/include;/lora-cuda/build-release/node-api/node-addon-api' \
  -DNODE_ADDON_API_DIR=/lora-cuda/build-release/node-api/node-addon-api \
  '-DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION -include $compat' \
  '-DCMAKE_CUDA_FLAGS=-Xcompiler=-include,$compat'
cmake --build build-release -j $jobs
" || { chown -R "$owner" "$out"; die "the build failed (above)"; }
chown -R "$owner" "$out"

addon=$out/Release/lora_cuda.node
archs=$(sed -n 's/^LORA_CUDA_ARCHS_USED:INTERNAL=//p' "$out/CMakeCache.txt")
[ -n "$archs" ] || die "the build has no CUDA backend (was nvcc found?); a release binary must carry it"
say "$addon: CUDA architectures $archs"
bash scripts/glibc-ceiling.sh "$addon" 2.28

# ---- the addon at work under the chroot's older glibc and without the host's libstdc++: the host's
# node, when it runs there (official Node.js 20 builds need glibc 2.28), trains a LoRA layer through
# the compiled package (dist/) with this addon.
[ -f dist/lib/index.js ] || die "dist/ is not built, so the addon cannot be tried: run npm install (or npm run build:ts) first"
if ! why=$(in_chroot '/opt/host-node/node --version' 2>&1); then
  say "skipped trying the addon under glibc $suite: the host's node ($node_bin) does not run there: $why"
  exit 0
fi
in_chroot '
cd /lora-cuda
LORA_CUDA_ADDON=/lora-cuda/build-release/Release/lora_cuda.node /opt/host-node/node -e "
const lc = require(\"./dist/lib\");
const glibc = process.report.getReport().header.glibcVersionRuntime;
lc.manualSeed(0);
const lora = new lc.LoRALinear(new lc.Linear(16, 8), { r: 4, alpha: 8 });
const opt = new lc.Adam(lc.getLoraAB(lora), { lr: 0.05 });
const x = lc.randn([32, 16]), target = lc.randn([32, 8]);
const losses = [];
for (let step = 0; step < 30; step++) {
  const loss = lc.F.mseLoss(lora.forward(x), target);
  losses.push(loss.item());
  opt.zeroGrad(); loss.backward(); opt.step();
}
if (!(losses[29] < 0.9 * losses[0])) throw new Error(\"LoRA training did not lower the loss: \" + losses);
const info = lc.backendInfo();
console.log(\"build-release: under glibc \" + glibc + \": LoRA loss \" + losses[0].toFixed(4) + \" -> \" + losses[29].toFixed(4) +
  \" in 30 steps; cpu blas \" + info.cpu.blas + \", cuda \" + (info.cuda.available ? \"available\" : \"unavailable: \" + info.cuda.reason));
"
' || die "the addon failed under glibc of Debian $suite (above)"
