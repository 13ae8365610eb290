#!/usr/bin/env node
// Install step: use a binary that already loads (a prebuild, or an earlier
// local build); otherwise build the addon from source with cmake-js.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
try {
  require('node-gyp-build')(root);
  if (!process.env.LORA_CUDA_FORCE_BUILD) {
    console.log('lora-cuda: native addon found, skipping the build (set LORA_CUDA_FORCE_BUILD=1 to rebuild)');
    process.exit(0);
  }
} catch {
  // nothing loads yet: build it
}
let cmakeJs;
try {
  cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
} catch {
  console.error('lora-cuda: no prebuilt binary loads and cmake-js is not installed, so the addon cannot be built.\n' +
    'Install the build tools (cmake, a C++17 compiler) and run "npm install cmake-js node-addon-api && npm run build:native".');
  process.exit(1);
}
const r = spawnSync(process.execPath, [cmakeJs, 'compile'], { cwd: root, stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
