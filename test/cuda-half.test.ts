// bfloat16 and float16 on the CUDA backend, beyond the op registry's parity suite (which runs
// every op in the half dtypes on the CPU and on CUDA): the cast kernels between every pair of
// dtypes, bit for bit against the CPU's casts and against the rounding rule itself (to nearest,
// ties to even, float16 overflowing to infinity from 65520), the refusal of half values int32
// cannot hold, the LoRA of a half layer with float32 adapters (the mixed composite, through the
// CUDA casts, half and float32 GEMMs and accumulation), and half and float32 operands refused
// where an op takes one dtype.
// Runs where CUDA is available (in CI under the emulator, scripts/test-cuda-emu.sh).
import { LoRALinear, Linear, clipGradNorm, cuda, manualSeed, noGrad, randn, tensor, zeros, backendInfo } from '../lib';
import type { DType } from '../lib';
import { HALF_TOL } from './ops';
import { expectThrows } from './helpers/expect-throws';

const available = cuda.isAvailable();
if (!available) console.warn(`CUDA half-precision tests skipped: ${backendInfo().cuda.reason}`);
const describeCuda = available ? describe : describe.skip;

const DTYPES: DType[] = ['float32', 'float64', 'int32', 'bfloat16', 'float16'];

/** Equal as values: NaN equals NaN, -0 differs from +0 (the bits of a NaN may differ by device). */
function sameValues(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (!(Object.is(a[i], b[i]) || (Number.isNaN(a[i]) && Number.isNaN(b[i])))) return false;
  }
  return true;
}

const values = (t: { toArray(): ArrayLike<number> }): number[] => Array.from(t.toArray());

describeCuda('casts on CUDA', () => {
  // Ties, rounding up and down, subnormals, overflow, signed zeros, NaN and infinities, and
  // integers beyond the halves' exact range.
  const SOURCE = [
    0, -0, 1, -2, 3.3, 100.7, -65000, 12345.6, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 2049, 2051, 65504, 65519, 65520,
    -70000, 2 ** -25, 3 * 2 ** -26, 2 ** -130, 1e-40, 3.4e38, NaN, Infinity, -Infinity, 2 ** 31, -(2 ** 31),
  ];

  test('every pair of dtypes gives the CPU cast, value for value', () => {
    for (const from of DTYPES) {
      // int32 sources take the integral, in-range values only (the CPU refuses the rest).
      const src = from === 'int32' ? SOURCE.filter((v) => Number.isInteger(v) && Math.abs(v) < 2 ** 31) : SOURCE;
      const onCpu = tensor(src, { dtype: 'float64' }).to(from);
      const onGpu = onCpu.to('cuda');
      for (const to of DTYPES) {
        if (to === 'int32' && from !== 'int32') continue;  // the refusals are below
        const want = values(onCpu.to(to));
        const got = onGpu.to(to);
        expect(got.dtype).toBe(to);
        expect(got.device).toBe('cuda:0');
        if (!sameValues(values(got.cpu()), want)) {
          throw new Error(`${from} -> ${to} on CUDA: ${values(got.cpu()).join(', ')}; the CPU gives ${want.join(', ')}`);
        }
      }
    }
  });

  test('float to half rounds to nearest, ties to even, once', () => {
    const cases: { dtype: DType; from: number[]; want: number[] }[] = [
      // bfloat16 keeps 8 significant bits: 1 + 2^-8 is a tie (to 1), 1 + 3 * 2^-8 rounds up.
      { dtype: 'bfloat16', from: [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 2 ** -133, 2 ** -134], want: [1, 1 + 2 ** -6, -1, 2 ** -133, 0] },
      // float16: 11 significant bits, subnormals from 2^-24, the largest finite 65504.
      { dtype: 'float16', from: [2049, 2051, 65519, 65520, -65520, 2 ** -25, 3 * 2 ** -26, 2 ** -24], want: [2048, 2052, 65504, Infinity, -Infinity, 0, 2 ** -24, 2 ** -24] },
    ];
    for (const c of cases) {
      for (const src of ['float32', 'float64'] as const) {
        const got = values(tensor(c.from, { dtype: src, device: 'cuda' }).to(c.dtype).to('float64').cpu());
        expect(got).toEqual(c.want);
      }
    }
    // A half to the other half goes through float: bfloat16's 1 + 2^-7 is exact in float16.
    expect(values(tensor([1 + 2 ** -7, 3e38], { dtype: 'bfloat16', device: 'cuda' }).to('float16').cpu())).toEqual([1 + 2 ** -7, Infinity]);
  });

  test('a half value int32 cannot hold is refused, with the CPU message', () => {
    const caught = (fn: () => unknown): { name: string; code?: string; message: string } => {
      try {
        fn();
      } catch (e) {
        const err = e as Error & { code?: string };
        return { name: err.name, code: err.code, message: err.message };  // a RangeError of the addon's realm
      }
      throw new Error('nothing was thrown');
    };
    for (const dtype of ['bfloat16', 'float16'] as const) {
      for (const bad of [NaN, Infinity, -Infinity, ...(dtype === 'bfloat16' ? [3e9, -3e9] : [])]) {
        const data = [1.5, -2.5, bad];
        const onCpu = caught(() => tensor(data, { dtype }).to('int32'));
        expect(onCpu).toEqual({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/^copy: element 2 \(.+\) cannot be converted to int32/) });
        // On CUDA the kernel's report surfaces at the next synchronisation (the read).
        expect(caught(() => tensor(data, { dtype, device: 'cuda' }).to('int32').cpu())).toEqual(onCpu);
      }
      // In range: truncation toward zero, as torch.
      expect(values(tensor([1.5, -2.5, 255], { dtype, device: 'cuda' }).to('int32').cpu())).toEqual([1, -2, 255]);
    }
  });
});

describeCuda('half and float32 together on CUDA', () => {
  test('ops taking one dtype refuse a half beside a float32, naming both', () => {
    for (const half of ['bfloat16', 'float16'] as const) {
      const h = tensor([[1, 2], [3, 4]], { dtype: half, device: 'cuda' });
      const f = tensor([[1, 2], [3, 4]], { dtype: 'float32', device: 'cuda' });
      const both = new RegExp(`(${half}.*float32|float32.*${half})`);
      expectThrows(() => h.add(f), Error, both);
      expectThrows(() => f.mul(h), Error, both);
      expectThrows(() => h.matmul(f), Error, both);
      expectThrows(() => f.where(f.gt(0), h), Error, both);
    }
  });
});

/** max |a - b| / max |a| (the registry's normalised error). */
function normError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 1e-30;
  let err = 0;
  for (let i = 0; i < a.length; i++) {
    scale = Math.max(scale, Math.abs(a[i]));
    err = Math.max(err, Math.abs(a[i] - b[i]));
  }
  return a.length === b.length ? err / scale : Infinity;
}

describeCuda('LoRA on a half layer on CUDA', () => {
  test('forward, backward and merge with float32 adapters and dropout agree with the CPU', () => {
    for (const half of ['bfloat16', 'float16'] as const) {
      const run = (device: 'cpu' | 'cuda') => {
        manualSeed(3);
        const lin = new Linear(48, 24).to(half);
        lin.requiresGrad_(false);
        const lora = new LoRALinear(lin, { r: 4, alpha: 8, dropout: 0.25 });
        noGrad(() => lora.B!.copy_(randn([24, 4], { std: 0.1 })));
        lora.to(device);
        const x = randn([10, 48]).to(half).to(device).requiresGrad_(true);
        const y = lora.forward(x);
        y.backward(randn([10, 24]).to(half).to(device));
        lora.mergeToOrig();
        const f = (t: { to(d: DType): { cpu(): { toArray(): ArrayLike<number> } } }) => Array.from(t.to('float32').cpu().toArray());
        return {
          dtypes: [y.dtype, lora.A!.dtype, lora.A!.grad!.dtype, x.grad!.dtype, lin.weight.dtype],
          y: f(y), dx: f(x.grad!), dA: f(lora.A!.grad!), dB: f(lora.B!.grad!), merged: f(lin.weight),
        };
      };
      const ref = run('cpu');
      const got = run('cuda');
      expect(got.dtypes).toEqual([half, 'float32', 'float32', half, half]);
      expect(got.dtypes).toEqual(ref.dtypes);
      // The half results: both backends round once from float sums (orders differ): the registry's half
      // tolerance. The float32 adapter gradients: float32 sums in another order.
      for (const k of ['y', 'dx', 'merged'] as const) {
        const e = normError(ref[k], got[k]);
        if (!(e <= HALF_TOL[half])) throw new Error(`${half} ${k}: CUDA differs from the CPU by ${e}`);
      }
      for (const k of ['dA', 'dB'] as const) {
        const e = normError(ref[k], got[k]);
        if (!(e <= 1e-5)) throw new Error(`${half} ${k}: CUDA differs from the CPU by ${e}`);
      }
    }
  });
});

describeCuda('clipGradNorm over mixed dtypes on CUDA', () => {
  // The multi-tensor kernel reads each gradient in its own dtype; the norm is in the grads'
  // promoted dtype and each gradient is scaled in its own arithmetic type, rounded once, as on
  // the CPU. Sums of squares are in double on both backends (in chunks, so the order differs
  // only in the last bits of a double; the rounded float results agree).
  test('float32 adapters beside bfloat16 and float16 gradients, and all-bfloat16 ones: the CPU\'s values', () => {
    const cases: DType[][] = [['float32', 'bfloat16', 'float16'], ['bfloat16', 'bfloat16'], ['float16', 'bfloat16']];
    for (const dtypes of cases) {
      const run = (device: 'cpu' | 'cuda') => {
        manualSeed(21);
        const ps = dtypes.map((dtype, i) => zeros([37 + 9000 * i], { dtype: dtype as 'float32', device }).requiresGrad_(true));
        ps.forEach((p) => {
          p.grad = randn([...p.shape], { device }).to(p.dtype);
        });
        const norm = clipGradNorm(ps, 1.5);
        return { dtype: norm.dtype, norm: norm.item(), grads: ps.map((p) => [p.grad!.dtype, values(p.grad!)]) };
      };
      const cpu = run('cpu');
      const gpu = run('cuda');
      expect(gpu.dtype).toBe(dtypes.every((d) => d === dtypes[0]) ? dtypes[0] : 'float32');
      expect(gpu.dtype).toBe(cpu.dtype);
      expect(cpu.norm).toBeGreaterThan(1.5);
      expect(gpu.norm).toBe(cpu.norm);
      expect(gpu.grads).toEqual(cpu.grads);
    }
  });
});
