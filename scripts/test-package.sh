#!/usr/bin/env bash
# The package as a user gets it: npm pack, then install the tarball into a new
# project with npm's defaults (dependencies' install scripts not approved) and
# no compiler on PATH, and use it there: require, import as ESM, a strict
# TypeScript consumer compiled against its types, a LoRA layer forward, the
# CLI (doctor and the benchmarks too), and the addon in several worker threads at once.
# Checks that the prebuilt binary needs glibc 2.28 at most (scripts/glibc-ceiling.sh) and prints the
# tarball's size.
#
#   npm run test:package          (builds prebuilds/ first when it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

prebuild=$(ls prebuilds/linux-x64/*.node 2>/dev/null | head -n1 || true)
if [ -z "$prebuild" ]; then
  echo "test-package: no prebuilt binary yet; running npm run prebuild"
  npm run prebuild
  prebuild=$(ls prebuilds/linux-x64/*.node | head -n1)
fi
echo "test-package: prebuilt binary $prebuild ($(du -h "$prebuild" | cut -f1))"
# The glibc a user's system must have, read from the binary's symbol versions: at most 2.28 (README,
# Install), and no libstdc++ or libgcc_s of the system's.
bash scripts/glibc-ceiling.sh "$prebuild" 2.28

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" >"$work/pack.txt"
tarball="$work/$(tail -n1 "$work/pack.txt")"
echo "test-package: $(basename "$tarball") is $(du -h "$tarball" | cut -f1) ($(stat -c %s "$tarball") bytes)"

# What must be in the tarball, and what must not.
listing=$(tar -tzf "$tarball")
for need in package/dist/lib/index.js package/dist/lib/index.mjs package/dist/lib/index.d.ts \
            package/dist/lib/index.d.mts package/bin/lora-cuda.js package/prebuilds/linux-x64/ \
            package/CMakeLists.txt package/src/backend.h package/cuda/linear.cu package/binding/addon.cpp \
            package/binding/bench.cpp package/dist/bench/command.js; do
  if ! grep -q "^$need" <<<"$listing"; then echo "test-package: $need is missing from the tarball" >&2; exit 1; fi
done
# The compiled benchmarks (dist/bench) ship for `lora-cuda bench`; their sources, results and the tests do not.
if grep -qE '^package/(test|bench)/|\.test\.' <<<"$listing"; then
  echo "test-package: tests or benchmark sources or results were packed:" >&2
  grep -E '^package/(test|bench)/|\.test\.' <<<"$listing" >&2
  exit 1
fi

# The same PATH without any compiler or build tool: every command of its
# directories is linked into one, except cc, gcc, g++, c++, clang, make,
# cmake, nvcc and friends.
mkdir -p "$work/bin"
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    name=$(basename "$f")
    [ -x "$f" ] && [ ! -d "$f" ] || continue
    case "$name" in
      cc|c++|gcc*|g++*|*-gcc*|*-g++*|clang*|make|gmake|cmake*|ninja|nvcc*|ld|ld.*|as|x86_64-linux-gnu-*) continue ;;
    esac
    [ -e "$work/bin/$name" ] || ln -s "$f" "$work/bin/$name"
  done
done
export PATH="$work/bin"
for tool in cc gcc g++ c++ make cmake nvcc; do
  if command -v "$tool" >/dev/null 2>&1; then echo "test-package: $tool is still on PATH" >&2; exit 1; fi
done

app="$work/app"
mkdir -p "$app"
cd "$app"
cat >package.json <<'EOF'
{ "name": "consumer", "version": "1.0.0", "private": true }
EOF
# npm's defaults: no --ignore-scripts, no approvals; typescript only for the type check below.
npm install --no-audit --no-fund --loglevel=error "$tarball" typescript@5.9 @types/node@20 >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2; exit 1; }

cat >cjs.js <<'EOF'
const lc = require('lora-cuda');
lc.manualSeed(0);
const lin = new lc.Linear(16, 8);
const lora = new lc.LoRALinear(lin, { r: 4, alpha: 8 });
const x = lc.randn([3, 16]);
const y = lora.forward(x);
const ref = lin.forward(x); // B starts at zero: the wrapped layer equals the original
const a = y.toArray(), b = ref.toArray();
if (y.shape.join() !== '3,8') throw new Error('bad shape ' + y.shape);
for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) throw new Error('LoRA forward differs from the base layer at ' + i);
const info = lc.backendInfo();
// The addon this process loaded, for the check below that it is the prebuilt binary checked above.
const addons = process.report.getReport().sharedObjects.filter((f) => f.endsWith('.node'));
require('fs').writeFileSync('addon-loaded.txt', addons.join('\n'));
console.log(`cjs ok: LoRA forward [${y.shape}], cpu blas ${info.cpu.blas}, cuda ${info.cuda.available ? 'available' : 'unavailable: ' + info.cuda.reason}`);
EOF
node cjs.js
loaded=$(cat addon-loaded.txt)
if [ "$(wc -l <<<"$loaded")" != 1 ] || ! cmp -s "$loaded" "$root/$prebuild"; then
  echo "test-package: the installed package loaded ${loaded:-no addon}, not the prebuilt binary $prebuild" >&2
  exit 1
fi
echo "test-package: the installed package loads the prebuilt binary ($(realpath --relative-to="$app" "$loaded"))"

cat >esm.mjs <<'EOF'
import lcDefault, { LoRALinear, Linear, randn, injectLora, Module } from 'lora-cuda';
class Attn extends Module { q_proj = new Linear(8, 8); v_proj = new Linear(8, 8); }
const m = new Attn();
const names = injectLora(m, { r: 2, targetModules: ['q_proj', 'v_proj'] });
if (names.join() !== 'q_proj,v_proj') throw new Error('injectLora gave ' + names);
if (!(m.q_proj instanceof LoRALinear) || lcDefault.LoRALinear !== LoRALinear) throw new Error('ESM and CJS disagree');
console.log('esm ok:', m.q_proj.forward(randn([2, 8])).shape.join('x'));
EOF
node esm.mjs

# Strict TypeScript consumers, CommonJS and ESM. @ts-expect-error lines fail
# the compile if the types were loose (any), so the types are really checked.
cat >consumer.cts <<'EOF'
import { LoRALinear, Linear, Tensor, randn, backendInfo, cuda, type BackendInfo } from 'lora-cuda';
const lora = new LoRALinear(new Linear(4, 2), { r: 2, alpha: 4 });
const y: Tensor = lora.forward(randn([1, 4]));
const shape: readonly number[] = y.shape;
const info: BackendInfo = backendInfo();
const ok: boolean = cuda.isAvailable();
// @ts-expect-error r must be a number
new LoRALinear(new Linear(4, 2), { r: 'two' });
// @ts-expect-error no such export
import { notAnExport } from 'lora-cuda';
export { shape, info, ok, notAnExport };
EOF
cat >consumer.mts <<'EOF'
import { tidy, zeros, type Tensor } from 'lora-cuda';
import lc from 'lora-cuda';
const t: Tensor = tidy(() => zeros([2, 2]).add(1));
const n: number = lc.tensor([1, 2]).sum().item();
// @ts-expect-error item() returns a number
const s: string = t.sum().item();
export { t, n, s };
EOF
npx tsc --strict --noEmit --skipLibCheck false --module nodenext --moduleResolution nodenext --target es2022 \
  --types node consumer.cts consumer.mts
echo "types ok: strict CommonJS and ESM consumers compile"

cat >workers.js <<'EOF'
const { Worker } = require('worker_threads');
const code = `
  const { parentPort, workerData } = require('worker_threads');
  const lc = require('lora-cuda');
  lc.manualSeed(workerData);
  const l = new lc.LoRALinear(new lc.Linear(32, 32), { r: 4 });
  let s = 0;
  for (let i = 0; i < 20; i++) s += l.forward(lc.randn([8, 32])).sum().item();
  parentPort.postMessage(Number.isFinite(s));`;
const runs = [1, 2, 3, 4].map((seed) => new Promise((resolve, reject) => {
  const w = new Worker(code, { eval: true, workerData: seed });
  w.on('message', resolve);
  w.on('error', reject);
}));
require('lora-cuda').randn([2]); // the main thread uses it too
Promise.all(runs).then((r) => {
  if (!r.every(Boolean)) throw new Error('a worker failed');
  console.log(`workers ok: ${r.length} worker threads at once`);
});
EOF
node workers.js

npx lora-cuda --version
# doctor from the installed package: exit 0 (the CPU path works), the prebuilt binary found as such,
# and the glibc it reports that binary needs no higher than the ceiling checked above.
npx lora-cuda doctor
npx lora-cuda doctor --json >doctor.json
node -e '
const r = require("./doctor.json");
const fail = (m) => { console.error("test-package: lora-cuda doctor --json: " + m); process.exit(1); };
if (!r.ok) fail("not ok: " + JSON.stringify(r).slice(0, 300));
if (r.addon.kind !== "prebuilt" || !r.addon.path.endsWith("/node_modules/lora-cuda/prebuilds/linux-x64/lora-cuda.node"))
  fail("the addon is not the prebuilt binary: " + JSON.stringify(r.addon));
const [a, b] = (r.glibc.addonNeeds || "").split(".").map(Number);
if (!(a === 2 && b <= 28)) fail("the addon needs glibc " + r.glibc.addonNeeds + ", above 2.28");
console.log("doctor ok: " + r.addon.kind + " binary, needs glibc " + r.glibc.addonNeeds + ", this system has " + r.glibc.runtime);'
# The benchmarks run from the installed package (one tiny shape, a moment).
npx lora-cuda bench --device cpu --shapes tiny --json bench.json >bench.txt
grep -qE '^ *64 +32 +32 +4 +lora fwd\+bwd ' bench.txt || { cat bench.txt >&2; echo "test-package: lora-cuda bench printed no table" >&2; exit 1; }
node -e 'const r = require("./bench.json"); if (r.rows.length !== 5 || r.device !== "cpu") throw new Error("bench.json: " + JSON.stringify(r).slice(0, 200)); console.log("bench ok: " + r.rows.length + " rows, " + r.machine.cpu)'
echo "test-package: all checks passed"
