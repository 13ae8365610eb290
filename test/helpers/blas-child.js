// Runs matrix products through the native binding in a fresh process, so the
// BLAS choice (made once per process from LORA_CUDA_BLAS) can differ from the
// test runner's. Prints JSON: the backend info and each product's result.
'use strict';
const path = require('path');
const native = require('node-gyp-build')(path.resolve(__dirname, '..', '..'));

const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = { info: native.backendInfo(), results: [] };
for (const c of cases) {
  const dt = c.dtype === 'float64' ? 1 : 0;
  const Arr = dt === 1 ? Float64Array : Float32Array;
  const a = native.fromArray(Arr.from(c.a), c.aShape, dt, 0, 0);
  const b = native.fromArray(Arr.from(c.b), c.bShape, dt, 0, 0);
  const y = native.bmm(a, b, c.transA, c.transB);
  out.results.push(Array.from(native.toArray(y)));
}
process.stdout.write(JSON.stringify(out));
