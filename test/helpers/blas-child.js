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
  if (c.c0) {
    const m = c.transA ? c.aShape[2] : c.aShape[1];
    const n = c.transB ? c.bShape[1] : c.bShape[2];
    const a2 = native.view(a, [c.aShape[1], c.aShape[2]]);
    const b2 = native.view(b, [c.bShape[1], c.bShape[2]]);
    const y = native.fromArray(Arr.from(c.c0), [m, n], dt, 0, 0);
    native.bench.gemmInto(a2, b2, y, c.transA, c.transB, c.alpha, c.beta);
    out.results.push(Array.from(native.toArray(y)));
    continue;
  }
  const y = native.bmm(a, b, c.transA, c.transB);
  out.results.push(Array.from(native.toArray(y)));
}
process.stdout.write(JSON.stringify(out));
