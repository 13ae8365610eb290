// Registry entries for the layers' forward (the modules' own computation; the
// samples put the inputs in as the module's tensors, so their gradients are checked).
import { Embedding, LoRALinear, Linear, RMSNorm, Tensor, manualSeed, tensor, zeros, ones } from '../../lib';
import { LoRAEmbedding } from '../../lib';
import { CallContext, I, InputSpec, OpInfo, OpSample, fmt, ids, positive, scaled } from './types';
import { EMBEDDING_OPTION_ERRORS, EMBEDDING_OPTION_SAMPLES } from './modules';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];

// ------------------------------------------------------------ LoRALinear

const IN = 5;
const OUT = 4;
/** The dropout mask is fixed by seeding the generator just before each forward. */
const DROPOUT_SEED = 4242;

interface LoraCase {
  r: number;
  bias: boolean;
  lead: number[];
  alpha?: number;
  dropout?: number;
  useRslora?: boolean;
  /** Which of x, W, b, A, B require grad (default: x, A, B; the base frozen). */
  grads?: { x?: boolean; W?: boolean; b?: boolean; A?: boolean; B?: boolean };
  inF?: number;
  outF?: number;
  /** A check of the layer made on each evaluation. */
  check?: (l: LoRALinear) => void;
}

/** Inputs x, W, b (when bias), A, B: A and B as 0.5 N(0, 1), nonzero. */
function loraInputs(c: LoraCase): InputSpec[] {
  const g = { x: true, W: false, b: false, A: true, B: true, ...c.grads };
  const inF = c.inF ?? IN;
  const outF = c.outF ?? OUT;
  const half = scaled(0.5);
  return [
    I([...c.lead, inF], { grad: g.x }),
    I([outF, inF], { grad: g.W, state: true }),
    ...(c.bias ? [I([outF], { grad: g.b, state: true })] : []),
    I([c.r, inF], { grad: g.A, values: half, state: true }),
    I([outF, c.r], { grad: g.B, values: half, state: true }),
  ];
}

/** A LoRALinear over a fresh Linear whose weight, bias, A and B are the given tensors. */
function loraLayer(c: LoraCase, xs: Tensor[], { dtype, device }: CallContext): { l: LoRALinear; x: Tensor } {
  const [x, W, ...rest] = xs;
  const [b, A, B] = c.bias ? rest : [null, ...rest];
  const lin = new Linear(c.inF ?? IN, c.outF ?? OUT, { bias: c.bias, dtype, device });
  const l = new LoRALinear(lin, { r: c.r, alpha: c.alpha ?? 2 * c.r, dropout: c.dropout ?? 0, useRslora: c.useRslora ?? false });
  // After the constructor, which freezes the wrapped layer: the inputs keep their own requiresGrad.
  lin.weight = W;
  if (b) lin.bias = b;
  l.A = A;
  l.B = B;
  return { l, x };
}

function loraSample(name: string, c: LoraCase, extra: Partial<OpSample> = {}): OpSample {
  return {
    name,
    inputs: loraInputs(c),
    call: (xs, ctx) => {
      const { l, x } = loraLayer(c, xs, ctx);
      c.check?.(l);
      if (c.dropout) {
        l.train(true);
        manualSeed(DROPOUT_SEED);
      }
      return l.forward(x);
    },
    ...extra,
  };
}

const loraSamples: OpSample[] = [];
for (const r of [1, 2, 3, 8]) {
  for (const bias of [true, false]) {
    for (const lead of [[5], [2, 3], [2, 2, 3]]) {
      loraSamples.push(loraSample(`frozen base: dx, dA, dB, r=${r} ${bias ? 'bias' : 'no bias'} x ${fmt([...lead, IN])}`, { r, bias, lead }));
    }
  }
}
loraSamples.push(
  loraSample('1-D x [in]', { r: 2, bias: true, lead: [] }),
  loraSample('x without grad: only dA, dB', { r: 4, bias: true, lead: [3], grads: { x: false } }),
  ...([[1, true], [4, true], [3, false], [8, true]] as [number, boolean][]).map(([r, bias]) =>
    loraSample(`unfrozen base weight: dx, dW, db, dA, dB (r=${r} ${bias ? 'bias' : 'no bias'})`, { r, bias, lead: [2, 3], grads: { W: true, b: bias } })),
  loraSample('unfrozen weight only (bias frozen): db stays null', { r: 2, bias: true, lead: [4], grads: { W: true } }),
  loraSample('frozen adapter, only x requires grad', { r: 2, bias: true, lead: [4], grads: { A: false, B: false } }),
  loraSample('useRslora scaling (alpha 3, r 4: scale 3 / 2)', {
    r: 4, alpha: 3, bias: true, lead: [2, 3], useRslora: true,
    check: (l) => {
      if (Math.abs(l.scale - 1.5) > 1e-12) throw new Error(`useRslora: scale ${l.scale}, expected 1.5`);
    },
  }),
  ...([[1, true, [5]], [4, true, [2, 3]], [2, false, [2, 2, 3]], [8, true, [4]]] as [number, boolean, number[]][]).map(([r, bias, lead]) =>
    loraSample(`dropout 0.3 in training: dx, dA, dB (r=${r} ${bias ? 'bias' : 'no bias'} x ${fmt([...lead, IN])})`, { r, bias, lead, dropout: 0.3 })),
  loraSample('dropout 0.3 in training, unfrozen base: dx, dW, db, dA, dB', { r: 3, bias: true, lead: [2, 3], dropout: 0.3, grads: { W: true, b: true } }),
);
// Empty dims, as torch allows them (nn.Linear(0, 4)): no in-features, no out-features, no rows.
loraSamples.push(
  loraSample('zero in-features: y = b in every row', { r: 2, bias: true, lead: [3], inF: 0, grads: { W: true, b: true } }),
  loraSample('zero in-features with dropout', { r: 2, bias: true, lead: [3], inF: 0, dropout: 0.3, grads: { b: true } }),
  loraSample('zero out-features', { r: 2, bias: true, lead: [3], outF: 0, grads: { W: true, b: true } }),
  loraSample('zero rows', { r: 2, bias: true, lead: [0], grads: { W: true, b: true } }),
);
// Sizes for the device kernels: r = 1 to 64, M = 1 to 1000, with dropout (A and B as N(0, 1)).
for (const { M, K, N, r, p } of [
  { M: 1, K: 17, N: 3, r: 1, p: 0 },
  { M: 3, K: 64, N: 17, r: 8, p: 0 },
  { M: 17, K: 33, N: 65, r: 64, p: 0 },
  { M: 1000, K: 64, N: 48, r: 16, p: 0 },
  { M: 1000, K: 64, N: 48, r: 16, p: 0.25 },
]) {
  const c: LoraCase = { r, bias: true, lead: [M], inF: K, outF: N, dropout: p };
  loraSamples.push({
    ...loraSample(`M${M} in${K} out${N} r${r} dropout ${p}`, c, { gradcheck: false }),
    inputs: [I([M, K]), I([N, K], { grad: false, state: true }), I([N], { grad: false, state: true }), I([r, K], { state: true }), I([N, r], { state: true })],
  });
}

// PEFT's variants: lora_bias (B's own bias, an input with its gradient) and DoRA (the magnitude an
// input; DoRA's row norm is a constant in backward, so the finite-difference check leaves A and B
// frozen, and a parity-only sample compares their gradients between the devices).
function variantSample(name: string, o: { loraBias?: boolean; useDora?: boolean; dropout?: number; ab?: boolean; gradcheck?: boolean }): OpSample {
  const half = scaled(0.5);
  const ab = o.ab ?? true;
  return {
    name,
    gradcheck: o.gradcheck ?? true,
    inputs: [I([2, 3, IN]), I([OUT, IN], { grad: false, state: true }), I([OUT], { grad: false, state: true }),
      I([2, IN], { grad: ab, values: half, state: true }), I([OUT, 2], { grad: ab, values: half, state: true }),
      I([OUT], { values: o.useDora ? positive : half, state: true })],
    call: ([x, W, b, A, B, v], { dtype, device }) => {
      const lin = new Linear(IN, OUT, { dtype, device });
      const l = new LoRALinear(lin, { r: 2, alpha: 3, dropout: o.dropout ?? 0, loraBias: o.loraBias, useDora: o.useDora });
      lin.weight = W;
      lin.bias = b;
      l.A = A;
      l.B = B;
      if (o.loraBias) l.loraBias = v;
      else l.magnitude = v;
      if (o.dropout) {
        l.train(true);
        manualSeed(DROPOUT_SEED);
      }
      return l.forward(x);
    },
  };
}
loraSamples.push(
  variantSample('loraBias: dx, dA, dB, dloraBias', { loraBias: true }),
  variantSample('loraBias with dropout 0.3 in training', { loraBias: true, dropout: 0.3 }),
  variantSample('useDora (A, B frozen): dx, dmagnitude', { useDora: true, ab: false }),
  variantSample('useDora with dropout 0.3 in training (A, B frozen)', { useDora: true, ab: false, dropout: 0.3 }),
  variantSample('useDora: dA, dB as well (the norm detached; parity only)', { useDora: true, gradcheck: false }),
  variantSample('useDora with dropout: dA, dB as well (parity only)', { useDora: true, dropout: 0.3, gradcheck: false }),
);

/** The layer with its bias replaced (as user code may do after construction). */
function withBias(l: Linear, bias: Tensor): Linear {
  l.bias = bias;
  return l;
}

/** The layer with A and/or B replaced. */
function withAdapter(l: LoRALinear, t: { A?: Tensor; B?: Tensor }): LoRALinear {
  Object.assign(l, t);
  return l;
}

// ------------------------------------------------------------ the entries

export const LAYER_OPS: OpInfo[] = [
  {
    name: 'Linear.forward', where: ['Linear.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: [{
      name: 'x [2,4], weight [3,4], bias [3]', inputs: [I([2, 4]), I([3, 4], { state: true }), I([3], { state: true })],
      call: ([x, w, b], { dtype, device }) => {
        const lin = new Linear(4, 3, { dtype, device });
        lin.weight = w;
        lin.bias = b;
        return lin.forward(x);
      },
    }, {
      name: 'Linear(0, 3): x [2,0] (y = bias in every row, as torch)', inputs: [I([2, 0]), I([3, 0], { state: true }), I([3], { state: true })],
      call: ([x, w, b], { dtype, device }) => {
        const lin = new Linear(0, 3, { dtype, device });
        lin.weight = w;
        lin.bias = b;
        return lin.forward(x);
      },
    }],
    errors: [
      { name: 'a float64 x on a float32 layer', call: () => new Linear(3, 2).forward(zeros([4, 3], { dtype: 'float64' })), type: TypeError,
        message: /^Linear\.forward: x is float64 but weight is float32/ },
      { name: 'x whose last dim is not inFeatures', call: () => new Linear(8, 2).forward(zeros([2, 4])), type: RangeError,
        message: /^Linear\.forward: x\.shape\[-1\] must be 8 \(inFeatures\), got 4$/, standard: true },
      { name: 'x not a tensor', call: () => new Linear(8, 2).forward([1, 2] as unknown as Tensor), type: TypeError, message: /^Linear\.forward: x must be a Tensor, got \[1, 2\]$/ },
      { name: 'a 0-d x', call: () => new Linear(8, 2).forward(zeros([])), type: RangeError, message: /^Linear\.forward: x must be a tensor with at least 1 dim/ },
      { name: 'a float64 bias assigned after construction', call: () => withBias(new Linear(3, 2), zeros([2], { dtype: 'float64' })).forward(zeros([4, 3])), type: TypeError,
        message: /^Linear\.forward: x is float32 but bias is float64; convert one with \.to\('float32'\)$/ },
      { name: 'a bias of the wrong length assigned after construction', call: () => withBias(new Linear(3, 2), zeros([3])).forward(zeros([4, 3])), type: RangeError,
        message: /^Linear\.forward: bias must be a 1-D tensor of 2 elements, got Tensor\(shape \[3\], float32, cpu\)$/, standard: true },
    ],
  },
  {
    name: 'LoRALinear.forward', where: ['LoRALinear.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 1e-4,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: loraSamples,
    errors: [
      { name: 'x [32] for 64 in-features', call: () => new LoRALinear(new Linear(64, 16), { r: 4 }).forward(zeros([32])), type: RangeError,
        message: /^LoRALinear\.forward: x\.shape\[-1\] must be 64 \(inFeatures\), got 32$/, standard: true },
      { name: 'x [3,5,32] for 64 in-features', call: () => new LoRALinear(new Linear(64, 16), { r: 4 }).forward(zeros([3, 5, 32])), type: RangeError,
        message: /^LoRALinear\.forward: x\.shape\[-1\] must be 64 \(inFeatures\), got 32$/ },
      { name: 'a float64 x on a float32 layer', call: () => new LoRALinear(new Linear(64, 16), { r: 4 }).forward(zeros([2, 64], { dtype: 'float64' })), type: TypeError,
        message: /^LoRALinear\.forward: x is float64 but origLinear\.weight is float32/ },
      { name: 'x not a tensor', call: () => new LoRALinear(new Linear(64, 16), { r: 4 }).forward('x' as unknown as Tensor), type: TypeError,
        message: /^LoRALinear\.forward: x must be a Tensor, got "x"$/ },
      // Tensors replaced after construction: checked before native code, naming the tensor.
      { name: 'a float64 A', call: () => withAdapter(new LoRALinear(new Linear(64, 16), { r: 4 }), { A: zeros([4, 64], { dtype: 'float64' }) }).forward(zeros([2, 64])),
        type: TypeError, message: /^LoRALinear\.forward: A is float64 but x is float32; the adapters of a float32 layer must be float32$/ },
      { name: 'a float64 origLinear.bias', call: () => new LoRALinear(withBias(new Linear(64, 16), zeros([16], { dtype: 'float64' })), { r: 4 }).forward(zeros([2, 64])),
        type: TypeError, message: /^LoRALinear\.forward: x is float32 but origLinear\.bias is float64; convert one with \.to\('float32'\)$/ },
      { name: 'a float64 origLinear.bias with the adapter disabled', call: () => {
        const l = new LoRALinear(withBias(new Linear(64, 16), zeros([16], { dtype: 'float64' })), { r: 4 });
        l.enabled = false;
        return l.forward(zeros([2, 64]));
      }, type: TypeError, message: /^LoRALinear\.forward: x is float32 but origLinear\.bias is float64/ },
      { name: 'an int32 B', call: () => withAdapter(new LoRALinear(new Linear(64, 16), { r: 4 }), { B: zeros([16, 4], { dtype: 'int32' }) }).forward(zeros([2, 64])),
        type: RangeError, message: /^LoRALinear\.forward: B's dtype must be float32, float64, bfloat16 or float16, got "int32"$/, standard: true },
      { name: 'a B of the wrong shape', call: () => withAdapter(new LoRALinear(new Linear(64, 16), { r: 4 }), { B: zeros([4, 16]) }).forward(zeros([2, 64])),
        type: RangeError, message: /^LoRALinear\.forward: B must be a 2-D tensor of shape \[16, 4\] \(\[outFeatures, r\]\), got Tensor\(shape \[4, 16\], float32, cpu\)$/, standard: true },
      { name: 'an A that is not a tensor', call: () => withAdapter(new LoRALinear(new Linear(64, 16), { r: 4 }), { A: [[0]] as unknown as Tensor }).forward(zeros([2, 64])),
        type: TypeError, message: /^LoRALinear\.forward: A must be a Tensor, got \[\[0\]\]$/, standard: true },
    ],
  },
  {
    name: 'LoRAEmbedding.forward', where: ['LoRAEmbedding.forward', 'embedding'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: [{
      name: 'ids [2,3] into [5,3], r 2: dA, dB', inputs: [ids([2, 3], [4, 0, 4, 2, 1, 0]), I([5, 3], { grad: false, state: true }),
        I([2, 5], { values: scaled(0.5), state: true }), I([3, 2], { values: scaled(0.5), state: true })],
      call: ([i, w, A, B], { dtype, device }) => {
        const e = new Embedding(5, 3, { dtype, device });
        const l = new LoRAEmbedding(e, { r: 2, alpha: 3 });
        e.weight = w;
        l.A = A;
        l.B = B;
        return l.forward(i);
      },
    }],
    errors: [
      { name: 'an A of the wrong shape', call: () => {
        const l = new LoRAEmbedding(new Embedding(5, 3), { r: 2 });
        l.A = zeros([5, 2]);
        return l.forward(tensor([1], { dtype: 'int32' }));
      }, type: RangeError, message: /^LoRAEmbedding\.forward: A must be a 2-D tensor of shape \[2, 5\] \(\[r, numEmbeddings\]\), got Tensor\(shape \[5, 2\], float32, cpu\)$/, standard: true },
    ],
  },
  {
    name: 'Embedding.forward', where: ['Embedding.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: [{
      name: 'repeated ids [2,3] into [5,3]', inputs: [ids([2, 3], [4, 0, 4, 2, 1, 0]), I([5, 3], { state: true })],
      call: ([i, w], { dtype, device }) => {
        const e = new Embedding(5, 3, { dtype, device });
        e.weight = w;
        return e.forward(i);
      },
    }, ...EMBEDDING_OPTION_SAMPLES],
    errors: [
      { name: 'an id past the end', call: () => new Embedding(3, 2).forward(tensor([3], { dtype: 'int32' })), type: RangeError,
        message: /^Embedding.forward: ids\[0\] must be in \[0, 3\)/, standard: true },
      ...EMBEDDING_OPTION_ERRORS,
    ],
  },
  {
    name: 'RMSNorm.forward', where: ['RMSNorm.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: [{
      name: 'x [3,6], eps 1e-5', inputs: [I([3, 6]), I([6], { values: (v) => 1 + 0.1 * v, state: true })],
      call: ([x, w], { dtype, device }) => {
        const n = new RMSNorm(6, { eps: 1e-5, dtype, device });
        n.weight = w;
        return n.forward(x);
      },
    }],
    errors: [
      { name: 'x whose last dim is not dim', call: () => new RMSNorm(4).forward(ones([2, 3])), type: RangeError,
        message: /^RMSNorm.forward: x.shape\[-1\] must be 4 \(dim\), got 3$/, standard: true },
      { name: 'a float64 x on a float32 layer', call: () => new RMSNorm(4).forward(zeros([2, 4], { dtype: 'float64' })), type: TypeError,
        message: /RMSNorm.forward: x is float64 but weight is float32/ },
    ],
  },
];
