#!/usr/bin/env node
// The lora-cuda command line (lib/cli/index.ts, compiled to dist/).
'use strict';
const path = require('path');

let cli;
try {
  cli = require(path.join(__dirname, '..', 'dist', 'lib', 'cli', 'index.js'));
} catch (e) {
  if (e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(path.join('dist', 'lib', 'cli', 'index.js'))) {
    process.stderr.write('lora-cuda: the TypeScript is not compiled (dist/ is missing); run npm run build:ts in the package directory\n');
    process.exit(1);
  }
  throw e;
}
cli.main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
