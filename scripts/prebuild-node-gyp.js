#!/usr/bin/env node
// Stands in for node-gyp under prebuildify (npm run prebuild): prebuildify
// runs "node-gyp rebuild --target=V --arch=A --release" and then takes the
// .node file from build/Release. This runs the cmake-js build instead, with
// the CUDA backend and the full default list of GPU architectures whatever
// LORA_CUDA_ARCHS says: in build/ itself when that directory was configured
// that way (then the build is incremental, often nothing to do), otherwise in
// build-prebuild/, copying the addon to build/Release for prebuildify to
// strip and move into prebuilds/. With Node-API one binary serves every Node
// version, so --target is ignored.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  console.error(`prebuild-node-gyp: expected "rebuild", got ${JSON.stringify(args.join(' '))}`);
  process.exit(2);
}
const arch = (args.find((a) => a.startsWith('--arch=')) || `--arch=${process.arch}`).slice('--arch='.length);
if (arch !== process.arch) {
  console.error(`prebuild-node-gyp: cross-compiling (${process.arch} -> ${arch}) is not supported`);
  process.exit(2);
}
const debug = args.includes('--debug');
const config = debug ? 'Debug' : 'Release';

/** Entries NAME:TYPE=VALUE of a CMakeCache.txt, or null without one. */
function cmakeCache(dir) {
  const file = path.join(dir, 'CMakeCache.txt');
  if (!fs.existsSync(file)) return null;
  const entries = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = /^([A-Za-z0-9_]+):[A-Z]+=(.*)$/.exec(line);
    if (m) entries[m[1]] = m[2];
  }
  return entries;
}
const local = cmakeCache(path.join(root, 'build'));
const reuse = !debug && local !== null && local.LORA_CUDA_ARCHS_USED !== undefined &&
  local.LORA_CUDA_ARCHS_USED !== '' && local.LORA_CUDA_ARCHS_USED === local.LORA_CUDA_ARCHITECTURES &&
  local.CMAKE_BUILD_TYPE === 'Release';
const out = reuse ? path.join(root, 'build') : path.join(root, 'build-prebuild');
console.log(`prebuild-node-gyp: building in ${path.relative(root, out)}/`);

const env = { ...process.env };
delete env.LORA_CUDA_ARCHS; // a release binary carries every architecture
const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
const r = spawnSync(process.execPath, [cmakeJs, 'compile', '-O', out, ...(debug ? ['--debug'] : [])], {
  cwd: root,
  env,
  stdio: 'inherit',
});
if (r.status !== 0) process.exit(r.status === null ? 1 : r.status);

const cache = cmakeCache(out) || {};
if (!cache.LORA_CUDA_ARCHS_USED) {
  console.error('prebuild-node-gyp: the build has no CUDA backend (nvcc was not found, or LORA_CUDA=OFF); ' +
    'a prebuilt binary must carry it: put nvcc (CUDA 12 or 13) on PATH');
  process.exit(1);
}
if (out !== path.join(root, 'build')) {
  const dest = path.join(root, 'build', config);
  fs.mkdirSync(dest, { recursive: true });
  fs.copyFileSync(path.join(out, config, 'lora_cuda.node'), path.join(dest, 'lora_cuda.node'));
}
