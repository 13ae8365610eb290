#!/usr/bin/env node
// Stands in for node-gyp under prebuildify (npm run prebuild): prebuildify
// runs "node-gyp rebuild --target=V --arch=A --release", then strips the
// .node file it finds in build/Release and moves it into prebuilds/. This
// runs the release build instead (scripts/build-release.sh: the CUDA backend
// with every default GPU architecture, built in a Debian 11 chroot so that the
// binary loads on glibc 2.28 and newer) and copies its addon to build/Release,
// replacing a local build there. With Node-API one binary serves every Node
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
if (args.includes('--debug')) {
  console.error('prebuild-node-gyp: a prebuilt binary is a release build; --debug is not supported');
  process.exit(2);
}

const r = spawnSync('bash', [path.join(root, 'scripts', 'build-release.sh')], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status === null ? 1 : r.status);

const dest = path.join(root, 'build', 'Release');
fs.mkdirSync(dest, { recursive: true });
fs.copyFileSync(path.join(root, 'build-release', 'Release', 'lora_cuda.node'), path.join(dest, 'lora_cuda.node'));
