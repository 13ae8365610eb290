// Registry entries for Dropout and LayerNorm (the modules and their F functions), and the
// samples and errors of Embedding's lookup options (in the Embedding.forward and F.embedding entries).
import { Dropout, Embedding, F, LayerNorm, Tensor, manualSeed, ones, tensor, zeros } from '../../lib';
import { ErrorCase, I, OpInfo, OpSample, fmt, ids } from './types';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];
/** The dropout mask is fixed by seeding the generator just before each forward. */
const SEED = 777;

// ----------------------------------------------------------------- dropout

const dropoutSamples = (call: (x: Tensor, p: number, training: boolean) => Tensor): OpSample[] => [
  ...([[[3, 4], 0.3], [[2, 3, 5], 0.5], [[17], 0.1], [[1000], 0.25]] as [number[], number][]).map(([shape, p]): OpSample => ({
    name: `x ${fmt(shape)}, p ${p}, training`, inputs: [I(shape)], gradcheck: shape[0] < 1000,
    call: ([x]) => {
      manualSeed(SEED);
      return call(x, p, true);
    },
  })),
  { name: 'p 1 in training: zeros, zero gradient', inputs: [I([2, 3])], call: ([x]) => call(x, 1, true) },
  { name: 'eval: the input itself', inputs: [I([2, 3])], call: ([x]) => call(x, 0.5, false).mul(1) },
  { name: 'empty x [0, 3]', inputs: [I([0, 3])], call: ([x]) => call(x, 0.5, true) },
];

// --------------------------------------------------------------- layerNorm

const lnInputs = (shape: number[], norm: number[], affine: boolean, bias = affine, state = false) => [
  I(shape),
  ...(affine ? [I(norm, { values: (v) => 1 + 0.3 * v, state })] : []),
  ...(bias ? [I(norm, { values: (v) => 0.2 * v, state })] : []),
];
const LN_CASES: [string, number[], number[], boolean, boolean][] = [
  ['x [3,5] over [5]', [3, 5], [5], true, true],
  ['x [2,3,4] over [3,4]', [2, 3, 4], [3, 4], true, true],
  ['x [4,6] over [6], no affine', [4, 6], [6], false, false],
  ['x [2,3] over [2,3]', [2, 3], [2, 3], true, true],
  ['x [3,5] over [5], weight without bias', [3, 5], [5], true, false],
];

// --------------------------------------------------------------- embedding

type LookupOptions = NonNullable<Parameters<typeof F.embedding>[2]>;
const EMB_IDS = [0, 2, 2, 5, 0, 1, 2, 2];
/** Options whose gradient is not the forward's derivative (torch's too): gradient parity only. */
const EMB_CASES: [string, LookupOptions, boolean][] = [
  ['paddingIdx 2: that row gets no gradient', { paddingIdx: 2 }, false],
  ['paddingIdx -1 (row 5)', { paddingIdx: -1 }, false],
  ['scaleGradByFreq: rows divided by their counts', { scaleGradByFreq: true }, false],
  ['scaleGradByFreq and paddingIdx 0', { scaleGradByFreq: true, paddingIdx: 0 }, false],
  ['maxNorm 1: rows renormalised in place first', { maxNorm: 1 }, false],
  ['maxNorm 1.5, normType 1', { maxNorm: 1.5, normType: 1 }, false],
  ['maxNorm 0.5, normType Infinity', { maxNorm: 0.5, normType: Infinity }, false],
  ['maxNorm above every row: the plain lookup', { maxNorm: 1e6 }, true],
];

export const MODULE_OPS: OpInfo[] = [
  {
    name: 'F.dropout', where: ['F.dropout'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: dropoutSamples((x, p, training) => F.dropout(x, p, training)),
    errors: [
      { name: 'p above 1', call: () => F.dropout(zeros([2]), 1.5), type: RangeError, message: /^F\.dropout: p must be in \[0, 1\], got 1\.5$/, standard: true },
      { name: 'x not a tensor', call: () => F.dropout([1] as unknown as Tensor), type: TypeError, message: /^F\.dropout: x must be a Tensor, got \[1\]$/, standard: true },
      { name: 'int32 x', call: () => F.dropout(zeros([2], { dtype: 'int32' })), type: RangeError, message: /^F\.dropout: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/ },
    ],
  },
  {
    name: 'Dropout.forward', where: ['Dropout.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: dropoutSamples((x, p, training) => new Dropout(p).train(training).forward(x)),
    errors: [
      { name: 'x not a tensor', call: () => new Dropout().forward(3 as unknown as Tensor), type: TypeError, message: /^Dropout\.forward: x must be a Tensor, got 3$/, standard: true },
    ],
  },
  {
    name: 'F.layerNorm', where: ['F.layerNorm'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    samples: [
      ...LN_CASES.map(([name, shape, norm, affine, bias]): OpSample => ({
        name, inputs: lnInputs(shape, norm, affine, bias),
        call: ([x, w, b]) => F.layerNorm(x, norm, affine ? w : null, bias ? b : null, 1e-5),
      })),
      { name: 'normalizedShape as a number, x [2,1,7]', inputs: [I([2, 1, 7])], call: ([x]) => F.layerNorm(x, 7) },
      { name: 'x [64,96] over [96]', inputs: lnInputs([64, 96], [96], true), call: ([x, w, b]) => F.layerNorm(x, [96], w, b), gradcheck: false },
    ],
    errors: [
      { name: 'x whose last dims are not normalizedShape', call: () => F.layerNorm(zeros([2, 3]), [4]), type: RangeError,
        message: /^F\.layerNorm: x must be a tensor whose last dim is \[4\] \(normalizedShape\), got Tensor\(shape \[2, 3\]/, standard: true },
      { name: 'x with fewer dims than normalizedShape', call: () => F.layerNorm(zeros([3]), [2, 3]), type: RangeError,
        message: /^F\.layerNorm: x must be a tensor whose last 2 dims are \[2, 3\]/ },
      { name: 'a weight of the wrong shape', call: () => F.layerNorm(zeros([2, 3]), [3], ones([2])), type: RangeError,
        message: /^F\.layerNorm: weight must be a tensor of shape \[3\] \(normalizedShape\) or null, got Tensor\(shape \[2\]/, standard: true },
      { name: 'a float64 bias with float32 x', call: () => F.layerNorm(zeros([2, 3]), [3], null, zeros([3], { dtype: 'float64' })), type: TypeError,
        message: /^F\.layerNorm: x is float32 but bias is float64/ },
      { name: 'an empty normalizedShape', call: () => F.layerNorm(zeros([2, 3]), []), type: RangeError, message: /^F\.layerNorm: normalizedShape must be at least one size, got \[\]$/ },
      { name: 'a negative eps', call: () => F.layerNorm(zeros([2, 3]), [3], null, null, -1), type: RangeError, message: /^F\.layerNorm: eps must be a number >= 0, got -1$/ },
    ],
  },
  {
    name: 'LayerNorm.forward', where: ['LayerNorm.forward'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    // Halves: the module's dtype option takes them with the models' mixed-precision work.
    halves: [],
    samples: LN_CASES.map(([name, shape, norm, affine, bias]): OpSample => ({
      name, inputs: lnInputs(shape, norm, affine, bias, true),
      call: ([x, w, b], { dtype, device }) => {
        const ln = new LayerNorm(norm, { elementwiseAffine: affine, bias, dtype, device });
        if (affine) ln.weight = w;
        if (bias) ln.bias = b;
        return ln.forward(x);
      },
    })),
    errors: [
      { name: 'x whose last dim is not normalizedShape', call: () => new LayerNorm(4).forward(zeros([2, 3])), type: RangeError,
        message: /^LayerNorm\.forward: x must be a tensor whose last dim is \[4\]/, standard: true },
      { name: 'a float64 x on a float32 layer', call: () => new LayerNorm(3).forward(zeros([2, 3], { dtype: 'float64' })), type: TypeError,
        message: /^LayerNorm\.forward: x is float64 but weight is float32/ },
      { name: 'a normalizedShape that is not a size', call: () => new LayerNorm('3' as unknown as number), type: TypeError,
        message: /^LayerNorm: normalizedShape must be a size or an array of sizes, got "3"$/ },
      { name: 'an unknown option', call: () => new LayerNorm(3, { elementwise_affine: false } as unknown as object), type: TypeError,
        message: /^LayerNorm: unknown option "elementwise_affine"/ },
    ],
  },
];

// Embedding's lookup options: samples and errors of the Embedding.forward and F.embedding entries.
export const EMBEDDING_OPTION_SAMPLES: OpSample[] = EMB_CASES.map(([name, o, grad]): OpSample => ({
  name: `options: ${name}`, inputs: [ids([2, 4], EMB_IDS), I([6, 3], { state: true })], gradcheck: grad,
  call: ([i, w], { dtype, device }) => {
    const e = new Embedding(6, 3, { ...o, dtype, device });
    e.weight = w;
    return e.forward(i);
  },
}));
export const EMBEDDING_OPTION_ERRORS: ErrorCase[] = [
  { name: 'options: sparse', call: () => new Embedding(4, 2, { sparse: true }), type: RangeError, message: /^Embedding: options\.sparse must be false/, standard: true },
  { name: 'options: paddingIdx out of range', call: () => new Embedding(4, 2, { paddingIdx: -5 }), type: RangeError,
    message: /^Embedding: options\.paddingIdx must be in \[-4, 4\) \(within numEmbeddings\), got -5$/, standard: true },
  { name: 'options: an id past the end with maxNorm (nothing renormalised)', call: () => new Embedding(4, 2, { maxNorm: 0.1 }).forward(tensor([1, 4], { dtype: 'int32' })),
    type: RangeError, message: /^Embedding\.forward: ids\[1\] must be in \[0, 4\)/ },
];
export const F_EMBEDDING_OPTION_SAMPLES: OpSample[] = EMB_CASES.map(([name, o, grad]): OpSample => ({
  name: `options: ${name}`, inputs: [ids([2, 4], EMB_IDS), I([6, 3])], gradcheck: grad, call: ([i, w]) => F.embedding(i, w, o),
}));
export const F_EMBEDDING_OPTION_ERRORS: ErrorCase[] = [
  { name: 'options: sparse', call: () => F.embedding(tensor([0], { dtype: 'int32' }), zeros([2, 2]), { sparse: true }), type: RangeError, message: /^embedding: options\.sparse must be false/ },
  { name: 'options: a negative maxNorm', call: () => F.embedding(tensor([0], { dtype: 'int32' }), zeros([2, 2]), { maxNorm: -1 }), type: RangeError,
    message: /^embedding: options\.maxNorm must be a number >= 0, got -1$/, standard: true },
  { name: 'options: an unknown option', call: () => F.embedding(tensor([0], { dtype: 'int32' }), zeros([2, 2]), { padding_idx: 0 } as unknown as object), type: TypeError,
    message: /^embedding: unknown option "padding_idx"/ },
];
