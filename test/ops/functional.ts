// Registry entries for the functional ops (`F`).
import { F, Tensor, ones, tensor, zeros } from '../../lib';
import { I, OpInfo, OpSample, awayFromZero, fmt, ids, scaled } from './types';
import { F_EMBEDDING_OPTION_ERRORS, F_EMBEDDING_OPTION_SAMPLES } from './modules';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];

type Reduction = 'mean' | 'sum' | 'none';
type CeOptions = { reduction?: Reduction; labelSmoothing?: number; ignoreIndex?: number };

const f64 = (shape: number[]) => zeros(shape, { dtype: 'float64' });
const int32 = (data: number[], shape: number[]) => tensor(data, { dtype: 'int32', shape });

// ------------------------------------------------------------ F.linear

const linearSamples: OpSample[] = [];
for (const xs of [[4], [3, 4], [2, 3, 4]]) {
  linearSamples.push({ name: `x ${fmt(xs)} with bias`, inputs: [I(xs), I([5, 4]), I([5])], call: ([x, w, b]) => F.linear(x, w, b) });
  linearSamples.push({ name: `x ${fmt(xs)} without bias`, inputs: [I(xs), I([5, 4])], call: ([x, w]) => F.linear(x, w) });
}
linearSamples.push(
  { name: 'x without grad: W and b only', inputs: [I([3, 4], { grad: false }), I([5, 4]), I([5])], call: ([x, w, b]) => F.linear(x, w, b) },
  { name: 'frozen weight and bias: x only', inputs: [I([2, 3, 4]), I([5, 4], { grad: false }), I([5], { grad: false })], call: ([x, w, b]) => F.linear(x, w, b) },
  { name: 'with bias, M = 1, 3, 1000', inputs: [I([1, 17]), I([3, 17]), I([1000, 17]), I([64, 17]), I([64])],
    call: ([x1, x3, xk, w, b]) => [F.linear(x1, w, b), F.linear(x3, w, b), F.linear(xk, w, b)], gradcheck: false },
  { name: 'without bias, frozen weight, odd sizes', inputs: [I([2, 3, 33]), I([17, 33], { grad: false })], call: ([x, w]) => F.linear(x, w), gradcheck: false },
  // Empty dims, as torch allows them: no in-features (y = b in every row), no out-features, no rows.
  { name: 'zero in-features: x [3,0], W [5,0], b [5]', inputs: [I([3, 0]), I([5, 0]), I([5])], call: ([x, w, b]) => F.linear(x, w, b) },
  { name: 'zero out-features: x [3,4], W [0,4], b [0]', inputs: [I([3, 4]), I([0, 4]), I([0])], call: ([x, w, b]) => F.linear(x, w, b) },
  { name: 'zero rows: x [0,4], W [5,4], b [5]', inputs: [I([0, 4]), I([5, 4]), I([5])], call: ([x, w, b]) => F.linear(x, w, b) },
);

// ------------------------------------------------------------ F.crossEntropy

const TARGETS = [1, 4, 0, 2];
/** Rotary tables for x of `dtype`: float32 for a half x (as transformers computes them). */
const tablesDtype = (dtype: string): string => (dtype === 'float64' ? 'float64' : 'float32');
const WITH_IGNORED = [1, -100, 3, 0];
const ceCases: [string, number[], number[] | number, CeOptions][] = [];
for (const reduction of ['mean', 'sum', 'none'] as const) {
  ceCases.push([`[N,C] ${reduction}`, [4, 5], TARGETS, { reduction }]);
  ceCases.push([`[N,C] ${reduction} with an ignored target (-100)`, [4, 5], WITH_IGNORED, { reduction }]);
  ceCases.push([`[N,C] ${reduction} labelSmoothing 0.1`, [4, 5], TARGETS, { reduction, labelSmoothing: 0.1 }]);
  ceCases.push([`[N,C] ${reduction} labelSmoothing 0.1 + ignored`, [4, 5], WITH_IGNORED, { reduction, labelSmoothing: 0.1 }]);
  ceCases.push([`[C] ${reduction} (number target)`, [5], 3, { reduction }]);
  ceCases.push([`[C] ${reduction} labelSmoothing 0.1 (array target)`, [5], [2], { reduction, labelSmoothing: 0.1 }]);
}
ceCases.push(['[N,C] default options', [3, 6], [5, 0, 2], {}]);
ceCases.push(['[N,C] custom ignoreIndex 2', [4, 5], [2, 1, 2, 4], { ignoreIndex: 2 }]);
ceCases.push(['[N,C] labelSmoothing 1.0', [3, 4], [0, 3, 1], { labelSmoothing: 1 }]);

const twice = (v: number) => 2 * v;
const ceLarge = Array.from({ length: 17 }, (_, i) => (i % 5 === 3 ? -100 : (i * 7919 + 13) % 1000));

// ------------------------------------------------------------ attention

const attentionSamples: OpSample[] = [];
for (const causal of [true, false]) {
  for (const [Hq, Hkv] of [[4, 2], [2, 2], [3, 1]]) {
    for (const T of [1, 5]) {
      attentionSamples.push({
        name: `Hq=${Hq} Hkv=${Hkv} T=${T} ${causal ? 'causal' : 'full'} (B 2, Dh 3)`,
        inputs: [I([2, Hq, T, 3]), I([2, Hkv, T, 3]), I([2, Hkv, T, 3])],
        call: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal }),
      });
    }
  }
}
attentionSamples.push({
  name: 'non-causal, S != T and Dv != Dh', inputs: [I([2, 4, 3, 4]), I([2, 2, 5, 4]), I([2, 2, 5, 2])],
  call: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: false }),
});
for (const [which, name] of [[0, 'q'], [1, 'k'], [2, 'v']] as const) {
  attentionSamples.push({
    name: `non-causal, only ${name} requires grad`,
    inputs: [I([1, 4, 3, 4], { grad: which === 0 }), I([1, 2, 5, 4], { grad: which === 1 }), I([1, 2, 5, 3], { grad: which === 2 })],
    call: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: false }),
  });
}
attentionSamples.push({
  name: 'Dh even, one tensor as both k and v', inputs: [I([1, 2, 4, 4]), I([1, 1, 4, 4])],
  call: ([q, kv]) => F.scaledDotProductAttention(q, kv, kv),
});
for (const { B, Hq, Hkv, T, D } of [
  { B: 1, Hq: 1, Hkv: 1, T: 1, D: 8 },
  { B: 2, Hq: 4, Hkv: 2, T: 17, D: 16 },
  { B: 1, Hq: 6, Hkv: 2, T: 40, D: 64 },
  { B: 1, Hq: 2, Hkv: 1, T: 70, D: 128 },
]) {
  attentionSamples.push(
    { name: `causal B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`, inputs: [I([B, Hq, T, D]), I([B, Hkv, T, D]), I([B, Hkv, T, D])],
      call: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: true }), gradcheck: false },
    { name: `full B${B} Hq${Hq} Hkv${Hkv} T${T} S${T + 3} D${D}`, inputs: [I([B, Hq, T, D]), I([B, Hkv, T + 3, D]), I([B, Hkv, T + 3, D])],
      call: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: false }), gradcheck: false },
  );
}

// keyStarts: per query, the first key it sees. Rows are laid out from their document starts
// (packing); a negative entry -p marks p leading padded positions (left padding, each padded
// query sees itself only).
const keyStarts = (T: number, rows: number[][]): number[] => rows.flatMap((docs) => {
  const out: number[] = [];
  const pad = docs[0] < 0 ? -docs[0] : 0;
  let s = 0;
  for (let t = 0; t < T; t++) {
    if (t < pad) { out.push(t); s = t + 1; continue; }
    if (docs.includes(t)) s = t;
    out.push(s);
  }
  return out;
});
for (const { B, Hq, Hkv, T, D, rows } of [
  { B: 2, Hq: 4, Hkv: 2, T: 5, D: 3, rows: [[-2], [0, 2]] },
  { B: 1, Hq: 3, Hkv: 1, T: 6, D: 2, rows: [[0, 1, 3, 5]] },
  { B: 2, Hq: 2, Hkv: 2, T: 7, D: 4, rows: [[-3, 5], [0, 4]] },
]) {
  attentionSamples.push({
    name: `keyStarts B${B} Hq${Hq} Hkv${Hkv} T${T} (padding and packed documents)`,
    inputs: [I([B, Hq, T, D]), I([B, Hkv, T, D]), I([B, Hkv, T, D]), ids([B, T], keyStarts(T, rows))],
    call: ([q, k, v, st]) => F.scaledDotProductAttention(q, k, v, { causal: true, keyStarts: st }),
  });
}
for (const { B, Hq, Hkv, T, D, rows } of [
  { B: 2, Hq: 4, Hkv: 2, T: 70, D: 16, rows: [[0, 13, 45], [-33, 50]] },
  { B: 1, Hq: 2, Hkv: 1, T: 40, D: 64, rows: [[-5, 9, 38]] },
  { B: 1, Hq: 2, Hkv: 1, T: 37, D: 264, rows: [[0, 3, 34]] },
]) {
  attentionSamples.push({
    name: `keyStarts B${B} Hq${Hq} Hkv${Hkv} T${T} D${D} (key tiles across document starts)`,
    inputs: [I([B, Hq, T, D]), I([B, Hkv, T, D]), I([B, Hkv, T, D]), ids([B, T], keyStarts(T, rows))],
    call: ([q, k, v, st]) => F.scaledDotProductAttention(q, k, v, { causal: true, keyStarts: st }), gradcheck: false,
  });
}

// Causal with S > T (bottom-right aligned: the queries are the last T of S positions, a decode
// step over cached keys), with and without keyStarts (left padding of the cached keys).
for (const { B, Hq, Hkv, T, S, D, starts, grad } of [
  { B: 2, Hq: 4, Hkv: 2, T: 1, S: 5, D: 3, starts: null, grad: true },
  { B: 2, Hq: 2, Hkv: 1, T: 3, S: 7, D: 4, starts: [2, 2, 2, 0, 0, 0], grad: true },
  { B: 2, Hq: 4, Hkv: 2, T: 1, S: 6, D: 3, starts: [3, 1], grad: true },
  { B: 2, Hq: 4, Hkv: 2, T: 1, S: 70, D: 16, starts: [33, 0], grad: false },
  { B: 1, Hq: 2, Hkv: 1, T: 20, S: 57, D: 64, starts: null, grad: false },
  { B: 1, Hq: 6, Hkv: 2, T: 5, S: 40, D: 264, starts: [7, 7, 7, 7, 7], grad: false },
]) {
  attentionSamples.push({
    name: `causal S > T B${B} Hq${Hq} Hkv${Hkv} T${T} S${S} D${D}${starts ? ' with keyStarts' : ''}`,
    inputs: [I([B, Hq, T, D]), I([B, Hkv, S, D]), I([B, Hkv, S, D]), ...(starts ? [ids([B, T], starts)] : [])],
    call: ([q, k, v, st]) => F.scaledDotProductAttention(q, k, v, st ? { causal: true, keyStarts: st } : { causal: true }),
    ...(grad ? {} : { gradcheck: false }),
  });
}

// The projections' layout ([B, T, H, D], options.layout 'BTHD'): grouped heads, S > T, keyStarts,
// head dims the tensor-core tiles take and pad.
for (const { B, Hq, Hkv, T, S, D, causal, starts, grad } of [
  { B: 2, Hq: 4, Hkv: 2, T: 5, S: 5, D: 3, causal: true, starts: null, grad: true },
  { B: 1, Hq: 3, Hkv: 1, T: 4, S: 6, D: 2, causal: false, starts: null, grad: true },
  { B: 2, Hq: 2, Hkv: 1, T: 3, S: 7, D: 4, causal: true, starts: [2, 2, 2, 0, 0, 0], grad: true },
  { B: 2, Hq: 4, Hkv: 2, T: 70, S: 70, D: 64, causal: true, starts: null, grad: false },
  { B: 1, Hq: 2, Hkv: 1, T: 33, S: 90, D: 128, causal: false, starts: null, grad: false },
  { B: 2, Hq: 2, Hkv: 2, T: 37, S: 37, D: 48, causal: true, starts: keyStarts(37, [[0, 13], [-5, 20]]), grad: false },
]) {
  attentionSamples.push({
    name: `layout BTHD B${B} Hq${Hq} Hkv${Hkv} T${T} S${S} D${D} ${causal ? 'causal' : 'full'}${starts ? ' with keyStarts' : ''}`,
    inputs: [I([B, T, Hq, D]), I([B, S, Hkv, D]), I([B, S, Hkv, D]), ...(starts ? [ids([B, T], starts)] : [])],
    call: ([q, k, v, st]) => F.scaledDotProductAttention(q, k, v, st ? { causal, keyStarts: st, layout: 'BTHD' } : { causal, layout: 'BTHD' }),
    ...(grad ? {} : { gradcheck: false }),
  });
}

type AttentionOpts = Parameters<typeof F.scaledDotProductAttention>[3];
const q4 = () => f64([1, 4, 3, 2]);
const k2 = () => f64([1, 2, 3, 2]);

// ------------------------------------------------------------ the entries

export const FUNCTIONAL_OPS: OpInfo[] = [
  {
    name: 'F.linear', where: ['F.linear'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    samples: linearSamples,
    errors: [
      { name: 'a 1-D weight', call: () => F.linear(zeros([2, 3]), zeros([3])), type: RangeError,
        message: /^F\.linear: weight must be a 2-D tensor \[out, in\], got Tensor\(shape \[3\], float32, cpu\)$/, standard: true },
      { name: 'x whose last dim is not in', call: () => F.linear(zeros([2, 4]), zeros([5, 3])), type: RangeError,
        message: /^F\.linear: x\.shape\[-1\] must be 3 \(weight\.shape\[1\]\), got 4$/, standard: true },
      { name: 'a bias of the wrong length', call: () => F.linear(zeros([2, 3]), zeros([5, 3]), zeros([4])), type: RangeError,
        message: /^F\.linear: bias must be a 1-D tensor of 5 elements, got Tensor\(shape \[4\], float32, cpu\)$/ },
      { name: 'a 0-d x', call: () => F.linear(zeros([]), zeros([5, 3])), type: RangeError, message: /^F\.linear: x must be a tensor with at least 1 dim \[\.\.\., in\]/ },
      { name: 'a weight that is not a tensor', call: () => F.linear(zeros([2, 3]), [[1]] as unknown as Tensor), type: TypeError, message: /^F\.linear: weight must be a Tensor, got \[\[1\]\]$/ },
    ],
  },
  {
    name: 'F.relu', where: ['F.relu'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [{ name: 'F.relu (away from 0)', inputs: [I([3, 4], { values: awayFromZero(0.05) })], call: ([x]) => F.relu(x) }],
    errors: [
      { name: 'not a tensor', call: () => F.relu([1] as unknown as Tensor), type: TypeError, message: /^F\.relu: x must be a Tensor, got \[1\]$/, standard: true },
      { name: 'an int32 tensor', call: () => F.relu(int32([1, 2], [2])), type: RangeError, message: /^F\.relu: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/, standard: true },
    ],
  },
  {
    name: 'F.gelu', where: ['F.gelu'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: "F.gelu 'tanh'", inputs: [I([3, 4])], call: ([x]) => F.gelu(x, 'tanh') },
      { name: 'F.gelu default', inputs: [I([3, 4])], call: ([x]) => F.gelu(x) },
    ],
    errors: [
      { name: 'not a tensor', call: () => F.gelu('x' as unknown as Tensor), type: TypeError, message: /^F\.gelu: x must be a Tensor, got "x"$/, standard: true },
      { name: 'an unknown approximation', call: () => F.gelu(zeros([2]), 'fast' as 'tanh'), type: RangeError, message: /^F\.gelu: approximate must be one of "none", "tanh", got "fast"$/ },
      { name: 'an int32 tensor', call: () => F.gelu(int32([1], [1])), type: RangeError, message: /^F\.gelu: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/ },
    ],
  },
  {
    name: 'F.silu', where: ['F.silu'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [{ name: 'F.silu', inputs: [I([3, 4])], call: ([x]) => F.silu(x) }],
    errors: [
      { name: 'not a tensor', call: () => F.silu(3 as unknown as Tensor), type: TypeError, message: /^F\.silu: x must be a Tensor, got 3$/, standard: true },
      { name: 'an int32 tensor', call: () => F.silu(int32([1], [1])), type: RangeError, message: /^F\.silu: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/ },
    ],
  },
  {
    name: 'F.swiglu', where: ['F.swiglu'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'F.swiglu', inputs: [I([3, 4]), I([3, 4])], call: ([g, u]) => F.swiglu(g, u) },
      { name: 'up without grad', inputs: [I([2, 5]), I([2, 5], { grad: false })], call: ([g, u]) => F.swiglu(g, u) },
      { name: 'gate without grad', inputs: [I([2, 5], { grad: false }), I([2, 5])], call: ([g, u]) => F.swiglu(g, u) },
      // Large gates (exp saturating both ways) over several vectors and a tail.
      { name: '[3,37] wide gates', inputs: [I([3, 37], { values: scaled(12) }), I([3, 37])], call: ([g, u]) => F.swiglu(g, u), gradcheck: false },
    ],
    errors: [
      { name: 'not a tensor', call: () => F.swiglu(3 as unknown as Tensor, zeros([1])), type: TypeError, message: /^F\.swiglu: gate must be a Tensor, got 3$/, standard: true },
      { name: 'up not a tensor', call: () => F.swiglu(zeros([1]), null as unknown as Tensor), type: TypeError, message: /^F\.swiglu: up must be a Tensor, got null$/, standard: true },
      { name: 'mismatched shapes', call: () => F.swiglu(zeros([2, 3]), zeros([3, 2])), type: RangeError,
        message: /^F\.swiglu: up\.shape must be \[2, 3\] \(gate's shape\), got \[3, 2\]$/, standard: true },
      { name: 'no broadcasting', call: () => F.swiglu(zeros([2, 3]), zeros([3])), type: RangeError,
        message: /^F\.swiglu: up\.shape must be \[2, 3\] \(gate's shape\), got \[3\]$/ },
      { name: 'mixed dtypes', call: () => F.swiglu(zeros([2]), zeros([2], { dtype: 'float64' })), type: TypeError,
        message: /^F\.swiglu: gate is float32 but up is float64; convert one with \.to\('float32'\)$/ },
      { name: 'an int32 tensor', call: () => F.swiglu(int32([1], [1]), zeros([1])), type: RangeError, message: /^F\.swiglu: gate's dtype must be float32, float64, bfloat16 or float16, got "int32"$/ },
    ],
  },
  {
    name: 'F.mseLoss', where: ['F.mseLoss'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      ...(['mean', 'sum', 'none'] as const).map((reduction): OpSample => ({
        name: `reduction ${reduction} (grads of input and target)`, inputs: [I([3, 4]), I([3, 4])], call: ([a, t]) => F.mseLoss(a, t, { reduction }),
      })),
      { name: 'default reduction, target without grad', inputs: [I([2, 3, 2]), I([2, 3, 2], { grad: false })], call: ([a, t]) => F.mseLoss(a, t) },
      { name: '[3,17]', inputs: [I([3, 17]), I([3, 17])], call: ([a, b]) => F.mseLoss(a, b), gradcheck: false },
    ],
    errors: [
      { name: 'mismatched shapes', call: () => F.mseLoss(zeros([2, 3]), zeros([3, 2])), type: RangeError,
        message: /^F\.mseLoss: target\.shape must be \[2, 3\] \(the input's shape\), got \[3, 2\]$/, standard: true },
      { name: 'an unknown reduction', call: () => F.mseLoss(zeros([2]), zeros([2]), { reduction: 'avg' as 'mean' }), type: RangeError,
        message: /^F\.mseLoss: options\.reduction must be one of "mean", "sum", "none", got "avg"$/ },
    ],
  },
  {
    name: 'F.crossEntropy', where: ['F.crossEntropy'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    samples: [
      ...ceCases.map(([name, shape, target, options]): OpSample => ({
        name, inputs: [I(shape, { values: twice })], call: ([logits]) => F.crossEntropy(logits, target, options),
      })),
      // The targets are read on the host, as an array of class indices would be: from any device.
      { name: 'int32 tensor targets, labelSmoothing 0.1', inputs: [I([3, 4]), ids([3], [3, 0, -100], { anyDevice: true })],
        call: ([logits, t]) => F.crossEntropy(logits, t, { labelSmoothing: 0.1 }) },
      { name: 'ignore index and label smoothing, 1000 classes', inputs: [I([17, 1000])],
        call: ([x]) => [F.crossEntropy(x, ceLarge), F.crossEntropy(x, ceLarge, { labelSmoothing: 0.1, reduction: 'sum' })], gradcheck: false },
    ],
    errors: [
      { name: 'a target out of range', call: () => F.crossEntropy(zeros([2, 3]), [0, 3]), type: RangeError,
        message: /^F\.crossEntropy: target\[1\] must be in \[0, 3\) or ignoreIndex \(-100\), got 3$/ },
      { name: 'a negative target', call: () => F.crossEntropy(zeros([2, 3]), [-1, 0]), type: RangeError, message: /target\[0\] must be in \[0, 3\).*got -1$/ },
      { name: 'an int32 target out of range', call: () => F.crossEntropy(zeros([2, 3]), int32([0, 7], [2])), type: RangeError, message: /target\[1\] must be in \[0, 3\).*got 7$/ },
      { name: 'a fractional target', call: () => F.crossEntropy(zeros([2, 3]), [0, 1.5]), type: TypeError, message: /target\[1\] must be an integer class index, got 1\.5$/ },
      { name: 'one target too many', call: () => F.crossEntropy(zeros([2, 3]), [0, 1, 2]), type: RangeError,
        message: /^F\.crossEntropy: target\.length must be 2 \(one class index per row of input\), got 3$/ },
      { name: 'an int32 target of the wrong shape', call: () => F.crossEntropy(zeros([2, 3]), int32([0, 1, 2], [3])), type: RangeError,
        message: /^F\.crossEntropy: target\.shape must be \[2\], got \[3\]$/ },
      { name: 'a float target tensor', call: () => F.crossEntropy(zeros([2, 3]), tensor([0, 1])), type: TypeError, message: /target must be an int32 tensor of class indices/ },
      { name: '3-D logits', call: () => F.crossEntropy(zeros([2, 3, 4]), [0, 1]), type: RangeError, message: /input must be logits of shape \[N, C\] or \[C\]/ },
      { name: 'labelSmoothing above 1', call: () => F.crossEntropy(zeros([2, 3]), [0, 1], { labelSmoothing: 2 }), type: RangeError,
        message: /^F\.crossEntropy: options\.labelSmoothing must be in \[0, 1\], got 2$/, standard: true },
    ],
  },
  {
    name: 'F.embedding', where: ['embedding'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'weight, repeated ids (rows 2 and 4 unused)', inputs: [ids([2, 3], [1, 3, 1, 0, 1, 3]), I([5, 3])], call: ([i, w]) => F.embedding(i, w) },
      { name: 'repeated ids [4,10] into [50,17]', inputs: [ids([4, 10], { high: 50 }), I([50, 17])], call: ([i, w]) => F.embedding(i, w), gradcheck: false },
      ...F_EMBEDDING_OPTION_SAMPLES,
    ],
    errors: [
      { name: 'an id past the end', call: () => F.embedding(int32([0, 5], [2]), f64([5, 3])), type: RangeError,
        message: /^embedding: ids\[1\] must be in \[0, 5\) \(weight.shape\[0\]\), got 5$/, standard: true },
      { name: 'a negative id in 2-D ids', call: () => F.embedding(int32([0, 1, 2, -1], [2, 2]), f64([5, 3])), type: RangeError, message: /ids\[1, 1\] must be in \[0, 5\).*got -1$/ },
      { name: 'float ids', call: () => F.embedding(tensor([0, 1]), f64([5, 3])), type: TypeError, message: /embedding: ids must be an int32 tensor/ },
      { name: 'ids that are not a tensor', call: () => F.embedding([0, 1] as unknown as Tensor, f64([5, 3])), type: TypeError, message: /embedding: ids must be a Tensor, got \[0, 1\]/ },
      { name: 'a 1-D weight', call: () => F.embedding(int32([0], [1]), f64([5])), type: RangeError, message: /embedding: weight must be a 2-D tensor/, standard: true },
      { name: 'an int32 weight', call: () => F.embedding(int32([0], [1]), int32([1, 2], [1, 2])), type: RangeError, message: /weight's dtype must be float32, float64, bfloat16 or float16/ },
      ...F_EMBEDDING_OPTION_ERRORS,
    ],
  },
  {
    name: 'F.rmsNorm', where: ['rmsNorm'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'weight', inputs: [I([2, 3, 6]), I([6])], call: ([x, w]) => F.rmsNorm(x, w, 1e-5) },
      { name: 'weight, 1-D x', inputs: [I([5]), I([5])], call: ([x, w]) => F.rmsNorm(x, w, 1e-5) },
      { name: 'no weight', inputs: [I([3, 4])], call: ([x]) => F.rmsNorm(x, null, 1e-5) },
      { name: 'a frozen weight gets no gradient', inputs: [I([3, 4]), I([4], { grad: false })], call: ([x, w]) => F.rmsNorm(x, w, 1e-6) },
      { name: 'only the weight requires grad', inputs: [I([3, 4], { grad: false }), I([4])], call: ([x, w]) => F.rmsNorm(x, w, 1e-6) },
      { name: 'with and without weight [3,5,17]', inputs: [I([3, 5, 17]), I([17])], call: ([x, w]) => [F.rmsNorm(x, w, 1e-6), F.rmsNorm(x, null, 1e-5)], gradcheck: false },
    ],
    errors: [
      { name: 'a weight of the wrong length', call: () => F.rmsNorm(f64([2, 4]), f64([3])), type: RangeError,
        message: /^rmsNorm: weight must be a 1-D tensor of 4 elements \(x.shape\[-1\]\) or null, got Tensor\(shape \[3\]/ },
      { name: 'a float32 weight for float64 x', call: () => F.rmsNorm(f64([2, 4]), ones([4])), type: TypeError, message: /rmsNorm: x is float64 but weight is float32/ },
      { name: 'a negative eps', call: () => F.rmsNorm(f64([2, 4]), null, -1), type: RangeError, message: /rmsNorm: eps must be a number >= 0, got -1/ },
      { name: 'eps as a string', call: () => F.rmsNorm(f64([2, 4]), null, '1e-6' as unknown as number), type: TypeError, message: /eps must be a number/ },
      { name: 'a 0-d x', call: () => F.rmsNorm(tensor(3, { dtype: 'float64' }), null), type: RangeError, message: /rmsNorm: x must be a tensor with at least 1 dim/ },
      { name: 'int32 x', call: () => F.rmsNorm(int32([1], [1]), null), type: RangeError, message: /x's dtype must be float32, float64, bfloat16 or float16/ },
    ],
  },
  {
    name: 'F.applyRotary', where: ['applyRotary'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      ...([[1, 1, 1, 2], [2, 3, 5, 4]] as number[][]).flatMap(([B, H, T, Dh]): OpSample[] => [
        { name: `x ${fmt([B, H, T, Dh])}, tables with theta 100 from position 3`, inputs: [I([B, H, T, Dh])],
          call: ([x], { dtype, device }) => {
            const { cos, sin } = F.rotaryTables(T, Dh, { theta: 100, dtype: tablesDtype(dtype), device, positionOffset: 3 } as never);
            return F.applyRotary(x, cos, sin);
          } },
        // cos/sin whose halves differ exercise every term of the adjoint.
        { name: `x ${fmt([B, H, T, Dh])}, arbitrary cos and sin`, inputs: [I([B, H, T, Dh]), I([T, Dh], { grad: false }), I([T, Dh], { grad: false })],
          call: ([x, c, s]) => F.applyRotary(x, c, s) },
      ]),
      { name: 'x [2,3,7,16], tables with theta 10000', inputs: [I([2, 3, 7, 16])],
        call: ([x], { dtype, device }) => {
          const { cos, sin } = F.rotaryTables(7, 16, { theta: 10000, dtype: tablesDtype(dtype), device } as never);
          return F.applyRotary(x, cos, sin);
        }, gradcheck: false },
    ],
    errors: [
      { name: 'a 3-D x', call: () => F.applyRotary(f64([2, 3, 4]), f64([3, 4]), f64([3, 4])), type: RangeError,
        message: /^applyRotary: x must be a 4-D tensor \[B, H, T, Dh\]/, standard: true },
      { name: 'an odd head dim', call: () => F.applyRotary(f64([1, 2, 3, 5]), f64([3, 4]), f64([3, 4])), type: RangeError,
        message: /applyRotary: x.shape\[3\] \(head dim\) must be even .*got 5$/ },
      { name: 'tables for another length', call: () => F.applyRotary(f64([1, 2, 5, 4]), f64([3, 4]), f64([3, 4])), type: RangeError,
        message: /applyRotary: cos must be a 2-D tensor of shape \[5, 4\]/ },
      { name: 'a sin table of the wrong shape', call: () => F.applyRotary(f64([1, 2, 3, 4]), f64([3, 4]), f64([3, 2])), type: RangeError,
        message: /applyRotary: sin must be a 2-D tensor of shape \[3, 4\]/ },
      { name: 'float32 tables for float64 x', call: () => F.applyRotary(f64([1, 2, 3, 4]), zeros([3, 4]), f64([3, 4])), type: TypeError,
        message: /applyRotary: x is float64 but cos is float32/ },
      { name: 'a table that requires grad', call: () => F.applyRotary(f64([1, 2, 3, 4]), f64([3, 4]).requiresGrad_(true), f64([3, 4])), type: RangeError,
        message: /applyRotary: cos.requiresGrad must be false .*got true/ },
    ],
  },
  {
    name: 'F.rotaryTables', where: ['rotaryTables'], differentiable: false, dtypes: FLOATS, devices: BOTH_DEVICES,
    // Tables are float32 or float64 (float32 tables serve a half model, as in transformers).
    halves: [],
    samples: [
      { name: 'T 7, head dim 16, theta 10000', inputs: [], call: (_xs, { dtype, device }) => {
        const { cos, sin } = F.rotaryTables(7, 16, { theta: 10000, dtype, device } as never);
        return [cos, sin];
      } },
      { name: 'llama3 scaling from position 4095', inputs: [], call: (_xs, { dtype, device }) => {
        const { cos, sin } = F.rotaryTables(3, 128, { theta: 500000, dtype, device, positionOffset: 4095,
          scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 } } as never);
        return [cos, sin];
      } },
    ],
    errors: [
      { name: 'an odd head dim', call: () => F.rotaryTables(4, 5, { theta: 10000 }), type: RangeError, message: /^rotaryTables: headDim must be a positive even integer, got 5$/, standard: true },
      { name: 'tables too large to build', call: () => F.rotaryTables(1e9, 64, { theta: 10000 }), type: RangeError,
        message: /^rotaryTables: T must be at most 33554431 for headDim 64 \(a table \[T, headDim\] holds at most 2\^31 - 1 elements\), got 1000000000$/, standard: true },
      { name: 'no theta', call: () => F.rotaryTables(4, 8, {} as { theta: number }), type: TypeError, message: /rotaryTables: options.theta must be a number, got undefined/ },
      { name: 'no options', call: () => F.rotaryTables(4, 8, undefined as unknown as { theta: number }), type: TypeError, message: /rotaryTables: options must be an object/ },
      { name: 'a negative theta', call: () => F.rotaryTables(4, 8, { theta: -1 }), type: RangeError, message: /options.theta must be a number > 0/ },
      { name: 'an unknown scaling', call: () => F.rotaryTables(4, 8, { theta: 1e4, scaling: { type: 'yarn' } as unknown as null }), type: RangeError,
        message: /options.scaling.type must be one of "llama3", "linear", got "yarn"/ },
      { name: 'llama3 scaling with high <= low', call: () => F.rotaryTables(4, 8, { theta: 1e4, scaling: { type: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 } }),
        type: RangeError, message: /options.scaling.highFreqFactor must be > options.scaling.lowFreqFactor \(4\), got 1/ },
      { name: 'linear scaling without a factor', call: () => F.rotaryTables(4, 8, { theta: 1e4, scaling: { type: 'linear' } as unknown as null }), type: TypeError,
        message: /options.scaling.factor must be a number, got undefined/ },
      { name: 'a negative position offset', call: () => F.rotaryTables(4, 8, { theta: 1e4, positionOffset: -1 }), type: RangeError, message: /options.positionOffset must be a non-negative integer/ },
      { name: 'an int32 dtype', call: () => F.rotaryTables(4, 8, { theta: 1e4, dtype: 'int32' as 'float32' }), type: RangeError, message: /options.dtype must be one of "float32", "float64"/ },
    ],
  },
  {
    name: 'F.scaledDotProductAttention', where: ['scaledDotProductAttention'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    // Halves: with the attention op's own work.
    halves: [],
    samples: attentionSamples,
    errors: [
      { name: 'a 3-D q', call: () => F.scaledDotProductAttention(f64([4, 3, 2]), k2(), k2()), type: RangeError,
        message: /^scaledDotProductAttention: q must be a 4-D tensor \[B, Hq, T, Dh\]/, standard: true },
      { name: 'a 3-D k', call: () => F.scaledDotProductAttention(q4(), f64([2, 3, 2]), k2()), type: RangeError, message: /k must be a 4-D tensor/ },
      { name: 'keyStarts of the wrong shape', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { keyStarts: int32([0, 0], [1, 2]) }), type: RangeError,
        message: /options.keyStarts must be an int32 tensor of shape \[1, 3\] \(\[B, T\] of q\)/ },
      { name: 'keyStarts past the query', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { keyStarts: int32([0, 2, 0], [1, 3]) }), type: RangeError,
        message: /options.keyStarts\[0, 1\] must be a key index in \[0, 1\] \(at most the query's own position\), got 2/ },
      { name: 'keyStarts without causal', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { causal: false, keyStarts: int32([0, 0, 0], [1, 3]) }), type: RangeError,
        message: /options.causal must be true with options.keyStarts/ },
      { name: 'float keyStarts', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { keyStarts: f64([1, 3]) }), type: RangeError, message: /options.keyStarts must be an int32 tensor/ },
      { name: 'a 3-D v', call: () => F.scaledDotProductAttention(q4(), k2(), f64([2, 3, 2])), type: RangeError, message: /v must be a 4-D tensor/ },
      { name: 'query heads not a multiple of kv heads', call: () => F.scaledDotProductAttention(f64([1, 3, 3, 2]), k2(), k2()), type: RangeError,
        message: /^scaledDotProductAttention: q.shape\[1\] \(query heads\) must be a multiple of k.shape\[1\] \(2 kv heads\), got 3$/, standard: true },
      { name: 'another head dim in k', call: () => F.scaledDotProductAttention(q4(), f64([1, 2, 3, 3]), k2()), type: RangeError, message: /k.shape\[3\] \(head dim\) must be 2 \(q.shape\[3\]\), got 3/ },
      { name: 'another batch in k', call: () => F.scaledDotProductAttention(q4(), f64([2, 2, 3, 2]), k2()), type: RangeError, message: /k.shape\[0\] \(batch\) must be 1/ },
      { name: 'v of another length', call: () => F.scaledDotProductAttention(q4(), k2(), f64([1, 2, 4, 2])), type: RangeError, message: /v.shape must be \[1, 2, 3, Dv\]/ },
      { name: 'S < T with causal masking', call: () => F.scaledDotProductAttention(q4(), f64([1, 2, 2, 2]), f64([1, 2, 2, 2])), type: RangeError,
        message: /k.shape\[2\] \(key length\) must be at least 3 \(q.shape\[2\]\) with causal masking/ },
      { name: 'float32 k for float64 q', call: () => F.scaledDotProductAttention(q4(), zeros([1, 2, 3, 2]), k2()), type: TypeError, message: /q is float64 but k is float32/ },
      { name: 'a misspelt option', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { casual: true } as AttentionOpts), type: TypeError, message: /unknown option "casual"/ },
      { name: 'an unknown layout', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { layout: 'BSHD' } as unknown as AttentionOpts), type: RangeError,
        message: /^scaledDotProductAttention: options.layout must be 'BHTD' or 'BTHD', got "BSHD"$/, standard: true },
      { name: 'BTHD k with another head count', call: () => F.scaledDotProductAttention(f64([1, 3, 4, 2]), f64([1, 3, 3, 2]), f64([1, 3, 3, 2]), { layout: 'BTHD' }), type: RangeError,
        message: /q.shape\[2\] \(query heads\) must be a multiple of k.shape\[2\] \(3 kv heads\), got 4/ },
      { name: 'a string scale', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { scale: '1' } as unknown as AttentionOpts), type: TypeError, message: /options.scale must be a number/ },
      { name: 'causal not a boolean', call: () => F.scaledDotProductAttention(q4(), k2(), k2(), { causal: 1 } as unknown as AttentionOpts), type: TypeError, message: /options.causal must be a boolean/ },
      { name: 'an int32 k', call: () => F.scaledDotProductAttention(q4(), int32([0, 0, 0, 0], [1, 1, 2, 2]), k2()), type: RangeError, message: /k's dtype must be float32, float64, bfloat16 or float16/ },
    ],
  },
];
