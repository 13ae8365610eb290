// Runs bfloat16 GEMMs through the addon's gemm_bf16 hook (bench.gemmBf16: row strides, alpha,
// beta) in a fresh process, so the kernel choice (made once per process from LORA_CUDA_BF16_GEMM
// and LORA_CUDA_CPU_KERNELS) can differ from the test runner's. Reads the cases as JSON on stdin
// (bits of A, B and C as bfloat16 patterns); prints the backend info and each C's bits.
'use strict';
const path = require('path');
const native = require('node-gyp-build')(path.resolve(__dirname, '..', '..'));

const BF16 = 3; // lc::DType::BF16
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = { info: native.backendInfo(), results: [] };
const t = (bits) => native.fromArray(Uint16Array.from(bits.length ? bits : [0]), [Math.max(bits.length, 1)], BF16, 0, 0);
for (const c of cases) {
  const C = t(c.c);
  native.bench.gemmBf16(t(c.a), t(c.b), C, c.transA, c.transB, c.M, c.N, c.K, c.alpha, c.beta, c.lda, c.ldb, c.ldc);
  out.results.push(Array.from(native.toHalfBits(C)));
}
process.stdout.write(JSON.stringify(out));
