// Registry entries for the selection, scan, mask and pointwise ops: max/min/argmax/argmin, topk,
// cumsum, sigmoid, tanh, pow, clamp, the comparisons, where, maskedFill and logSoftmax (Tensor
// methods and their F forms). Their values against PyTorch are in test/ops-torch.test.ts.
import { F, Tensor, tensor, zeros } from '../../lib';
import { I, OpInfo, OpSample, awayFromZero, ids, positive, scaled } from './types';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];
const vi = (r: { values: Tensor; indices: Tensor }): Tensor[] => [r.values, r.indices];
const mask = (shape: number[], n: number): number[] => Array.from({ length: n }, (_, i) => (i * 5 + 1) % 3 === 0 ? 1 : 0);
const M = (shape: number[]) => ids(shape, mask(shape, shape.reduce((a, b) => a * b, 1)));

const dimErrors = (op: string, call: (x: Tensor) => unknown): OpInfo['errors'] => [
  { name: 'a dim out of range', call: () => call(zeros([2, 3])), type: RangeError, message: new RegExp(`^Tensor\\.${op}: dim must be in \\[-2, 1\\], got 2$`), standard: true },
];
const int32Error = (op: string, call: (x: Tensor) => unknown): OpInfo['errors'][number] =>
  ({ name: 'an int32 tensor', call: () => call(tensor([1, 2], { dtype: 'int32' })), type: RangeError,
    message: new RegExp(`^Tensor\\.${op}: the tensor's dtype must be float32, float64, bfloat16 or float16, got "int32"$`), standard: true });

function minmaxEntry(op: 'max' | 'min'): OpInfo {
  const samples: OpSample[] = [
    { name: 'over all elements', inputs: [I([3, 4])], call: ([x]) => x[op]() },
    { name: 'over a 0-d tensor', inputs: [I([])], call: ([x]) => x[op]() },
    { name: 'dim 1', inputs: [I([2, 3, 4])], call: ([x]) => vi(x[op](1)) },
    { name: 'dim -1 keepdim', inputs: [I([2, 3, 4])], call: ([x]) => vi(x[op](-1, true)) },
    { name: 'dim 0 of a 1-D tensor', inputs: [I([5])], call: ([x]) => vi(x[op](0)) },
    // Not differentiable at ties, so no finite differences; the gradients there are checked
    // against torch in ops-torch.test.ts.
    { name: 'ties: the first index, the gradient to it', inputs: [I([2, 4], { values: (_v, i) => [1, 3, 3, -2][i % 4] })], call: ([x]) => vi(x[op](1)), gradcheck: false },
    { name: 'ties over all elements: the gradient shared', inputs: [I([2, 3], { values: (_v, i) => [2, -1, 2][i % 3] })], call: ([x]) => x[op](), gradcheck: false },
    { name: 'rows of 1000 and columns of 17 (device kernels)', inputs: [I([3, 1000]), I([17, 5])],
      call: ([a, b]) => [...vi(a[op](1)), ...vi(b[op](0)), a[op]()], gradcheck: false, separateInputs: true },
    { name: 'a large tensor over all elements', inputs: [I([300, 400])], call: ([a]) => a[op](), gradcheck: false },
  ];
  return {
    name: `Tensor.${op}`, where: [`Tensor.${op}`], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, samples,
    errors: [
      ...dimErrors(op, (x) => x[op](2)),
      { name: 'keepdim not a boolean', call: () => zeros([2, 3])[op](0, 1 as unknown as boolean), type: TypeError,
        message: new RegExp(`^Tensor\\.${op}: keepdim must be a boolean, got 1$`), standard: true },
      { name: 'an empty tensor', call: () => zeros([0])[op](), type: RangeError, message: new RegExp(`^Tensor\\.${op}: the tensor must be non-empty`) },
      { name: 'an empty dim', call: () => zeros([2, 0])[op](1), type: RangeError, message: new RegExp(`^Tensor\\.${op}: dim 1 must be non-empty to reduce over`) },
      int32Error(op, (x) => x[op]()),
    ],
  };
}

function argEntry(op: 'argmax' | 'argmin'): OpInfo {
  return {
    name: `Tensor.${op}`, where: [`Tensor.${op}`], differentiable: false, dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'over all elements', inputs: [I([3, 4], { grad: false })], call: ([x]) => x[op]() },
      { name: 'over all elements keepdim', inputs: [I([3, 4], { grad: false })], call: ([x]) => x[op](null, true) },
      { name: 'dim 0 and dim -1 keepdim', inputs: [I([3, 17], { grad: false })], call: ([x]) => [x[op](0), x[op](-1, true)] },
      { name: 'ties: the first index', inputs: [I([2, 4], { grad: false, values: (_v, i) => [1, 3, 3, -2][i % 4] })], call: ([x]) => [x[op](1), x[op]()] },
    ],
    errors: [...dimErrors(op, (x) => x[op](2)), int32Error(op, (x) => x[op]()),
      { name: 'an empty tensor', call: () => zeros([2, 0])[op](), type: RangeError, message: new RegExp(`^Tensor\\.${op}: the tensor must be non-empty`) }],
  };
}

const unary = (op: 'sigmoid' | 'tanh'): OpInfo => ({
  name: `Tensor.${op}`, where: [`Tensor.${op}`], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
  samples: [
    { name: op, inputs: [I([3, 4])], call: ([x]) => x[op]() },
    { name: 'at large |x| (saturated tails)', inputs: [I([6], { values: scaled(6) })], call: ([x]) => x[op]() },
    { name: '[1000]', inputs: [I([1000], { values: scaled(3) })], call: ([x]) => x[op](), gradcheck: false },
  ],
  errors: [int32Error(op, (x) => x[op]())],
});

const fUnary = (op: 'sigmoid' | 'tanh'): OpInfo => ({
  name: `F.${op}`, where: [`F.${op}`], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
  samples: [{ name: `F.${op}`, inputs: [I([3, 4])], call: ([x]) => F[op](x) }],
  errors: [{ name: 'not a tensor', call: () => F[op](1 as unknown as Tensor), type: TypeError, message: new RegExp(`^F\\.${op}: x must be a Tensor, got 1$`), standard: true }],
});

type Cmp = 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge';
const compare = (op: Cmp): OpInfo => ({
  name: `Tensor.${op}`, where: [`Tensor.${op}`], differentiable: false, dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
  samples: [
    // Rounded values: equal elements occur, so eq/le/ge see ties.
    { name: 'a tensor, broadcasting [3,4] with [4]', inputs: [I([3, 4], { grad: false, values: Math.round }), I([4], { grad: false, values: Math.round })], call: ([a, b]) => a[op](b) },
    { name: 'a number', inputs: [I([3, 4], { grad: false, values: Math.round })], call: ([a]) => [a[op](0), a[op](1)] },
    { name: '[2,1,17] with [3,1]', inputs: [I([2, 1, 17], { grad: false, values: Math.round }), I([3, 1], { grad: false, values: Math.round })], call: ([a, b]) => a[op](b) },
  ],
  errors: [
    { name: 'shapes that do not broadcast', call: () => zeros([2, 3])[op](zeros([4])), type: RangeError,
      message: new RegExp(`^Tensor\\.${op}: shapes \\[2, 3\\] and \\[4\\] cannot be broadcast together \\(dim 1: 3 vs 4\\)$`) },
    { name: 'a string operand', call: () => zeros([2])[op]('1' as unknown as number), type: TypeError, message: new RegExp(`^Tensor\\.${op}: other must be a Tensor, got "1"$`), standard: true },
    { name: 'float32 with float64', call: () => zeros([2])[op](zeros([2], { dtype: 'float64' })), type: TypeError, message: new RegExp(`^Tensor\\.${op}: this is float32 but other is float64`) },
  ],
});

export const SELECT_OPS: OpInfo[] = [
  minmaxEntry('max'),
  minmaxEntry('min'),
  argEntry('argmax'),
  argEntry('argmin'),
  {
    name: 'Tensor.topk', where: ['Tensor.topk'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'k 3 along the last dim', inputs: [I([3, 6])], call: ([x]) => vi(x.topk(3)) },
      { name: 'k 2 along dim 0, smallest', inputs: [I([5, 3])], call: ([x]) => vi(x.topk(2, 0, false)) },
      { name: 'k the whole dim 1 of [2,4,3]', inputs: [I([2, 4, 3])], call: ([x]) => vi(x.topk(4, 1)) },
      { name: 'k 0', inputs: [I([2, 3])], call: ([x]) => vi(x.topk(0)), gradcheck: false },
      { name: 'k 1 of a 0-d tensor', inputs: [I([])], call: ([x]) => vi(x.topk(1)) },
      { name: 'ties: in index order', inputs: [I([2, 4], { values: (_v, i) => [1, 3, 3, -2][i % 4] })], call: ([x]) => vi(x.topk(3)), gradcheck: false },
      { name: 'k 40 of rows of 100 with ties, k 100 of all', inputs: [I([3, 100], { values: (v) => Math.round(2 * v) })],
        call: ([a]) => [...vi(a.topk(40)), ...vi(a.topk(100, 1, false))], gradcheck: false },
      { name: 'k 5 of rows of 1000, k 2 of columns of 17', inputs: [I([3, 1000]), I([17, 4])], call: ([a, b]) => [...vi(a.topk(5)), ...vi(b.topk(2, 0))], gradcheck: false, separateInputs: true },
    ],
    errors: [
      { name: 'k larger than the dim', call: () => zeros([2, 3]).topk(4), type: RangeError, message: /^Tensor\.topk: k must be in \[0, 3\] \(the size of dim 1\), got 4$/, standard: true },
      { name: 'a negative k', call: () => zeros([2, 3]).topk(-1, 0), type: RangeError, message: /^Tensor\.topk: k must be in \[0, 2\] \(the size of dim 0\), got -1$/, standard: true },
      { name: 'a fractional k', call: () => zeros([3]).topk(1.5), type: TypeError, message: /^Tensor\.topk: k must be an integer, got 1\.5$/, standard: true },
      { name: 'a dim out of range', call: () => zeros([2, 3]).topk(1, 2), type: RangeError, message: /^Tensor\.topk: dim must be in \[-2, 1\], got 2$/, standard: true },
      { name: 'largest not a boolean', call: () => zeros([3]).topk(1, 0, 'yes' as unknown as boolean), type: TypeError, message: /^Tensor\.topk: largest must be a boolean, got "yes"$/, standard: true },
    ],
  },
  {
    name: 'Tensor.cumsum', where: ['Tensor.cumsum'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'dim 0', inputs: [I([4, 3])], call: ([x]) => x.cumsum(0) },
      { name: 'dim -1', inputs: [I([2, 3, 5])], call: ([x]) => x.cumsum(-1) },
      { name: 'dim 1 of [2,3,5]', inputs: [I([2, 3, 5])], call: ([x]) => x.cumsum(1) },
      { name: 'a 0-d tensor', inputs: [I([])], call: ([x]) => x.cumsum(0) },
      { name: 'rows of 1000, columns of 17', inputs: [I([3, 1000]), I([17, 5])], call: ([a, b]) => [a.cumsum(1), b.cumsum(0)], gradcheck: false, separateInputs: true },
    ],
    errors: [
      ...dimErrors('cumsum', (x) => x.cumsum(2)),
      { name: 'no dim', call: () => zeros([2]).cumsum(undefined as unknown as number), type: TypeError, message: /^Tensor\.cumsum: dim must be an integer, got undefined$/, standard: true },
    ],
  },
  unary('sigmoid'),
  unary('tanh'),
  fUnary('sigmoid'),
  fUnary('tanh'),
  {
    name: 'Tensor.pow', where: ['Tensor.pow'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'a number exponent 2', inputs: [I([3, 4])], call: ([x]) => x.pow(2) },
      { name: 'a number exponent 3', inputs: [I([3, 4])], call: ([x]) => x.pow(3) },
      { name: 'a number exponent 0.5 (positive base)', inputs: [I([3, 4], { values: positive })], call: ([x]) => x.pow(0.5) },
      { name: 'a number exponent -1.5 (positive base)', inputs: [I([3, 4], { values: positive })], call: ([x]) => x.pow(-1.5) },
      { name: 'a tensor exponent, broadcasting [3,4] with [4]', inputs: [I([3, 4], { values: positive }), I([4])], call: ([a, b]) => a.pow(b) },
      { name: 'a tensor exponent [3,1] with a base [4]', inputs: [I([4], { values: positive }), I([3, 1])], call: ([a, b]) => a.pow(b) },
      { name: 'only the exponent requires grad', inputs: [I([3, 4], { grad: false, values: positive }), I([3, 4])], call: ([a, b]) => a.pow(b) },
      { name: '[3,1000] ^ [1000]', inputs: [I([3, 1000], { values: positive }), I([1000])], call: ([a, b]) => a.pow(b), gradcheck: false },
      { name: '[17] ^ 2', inputs: [I([17])], call: ([a]) => a.pow(2), gradcheck: false },
    ],
    errors: [
      { name: 'shapes that do not broadcast', call: () => zeros([2, 3]).pow(zeros([4])), type: RangeError, message: /^Tensor\.pow: shapes \[2, 3\] and \[4\] cannot be broadcast together \(dim 1: 3 vs 4\)$/ },
      { name: 'a string exponent', call: () => zeros([2]).pow('2' as unknown as number), type: TypeError, message: /^Tensor\.pow: exponent must be a Tensor, got "2"$/, standard: true },
      { name: 'an int32 exponent', call: () => zeros([2]).pow(tensor([2], { dtype: 'int32' })), type: RangeError, message: /^Tensor\.pow: exponent's dtype must be float32, float64, bfloat16 or float16, got "int32"$/, standard: true },
      int32Error('pow', (x) => x.pow(2)),
    ],
  },
  {
    name: 'Tensor.clamp', where: ['Tensor.clamp'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'min and max (away from the bounds)', inputs: [I([3, 4], { values: (v) => (Math.abs(Math.abs(v) - 0.5) < 0.01 ? v + 0.05 : v) })], call: ([x]) => x.clamp(-0.5, 0.5) },
      { name: 'min only', inputs: [I([3, 4], { values: awayFromZero(0.05) })], call: ([x]) => x.clamp(0) },
      { name: 'max only', inputs: [I([3, 4], { values: awayFromZero(0.05) })], call: ([x]) => x.clamp(null, 0) },
      { name: 'min > max: every element max', inputs: [I([5])], call: ([x]) => x.clamp(1, -1) },
      { name: '[3,1000]', inputs: [I([3, 1000])], call: ([x]) => x.clamp(-1, 0.5), gradcheck: false },
    ],
    errors: [
      { name: 'no bounds', call: () => zeros([2]).clamp(), type: TypeError, message: /^Tensor\.clamp: min or max must be a number \(at least one of them\), got undefined$/, standard: true },
      { name: 'a NaN bound', call: () => zeros([2]).clamp(NaN, 1), type: TypeError, message: /^Tensor\.clamp: min must be a number \(not NaN\) or null, got NaN$/, standard: true },
      { name: 'a string bound', call: () => zeros([2]).clamp(null, '1' as unknown as number), type: TypeError, message: /^Tensor\.clamp: max must be a number \(not NaN\) or null, got "1"$/, standard: true },
      int32Error('clamp', (x) => x.clamp(0)),
    ],
  },
  ...(['eq', 'ne', 'lt', 'le', 'gt', 'ge'] as const).map(compare),
  {
    // int32 values work (the result is int32), but the harness's int32 check converts every input
    // to float64, the condition too, which must stay an int32 mask: so int32 is left unset here.
    name: 'Tensor.where', where: ['Tensor.where', 'Tensor.gt'], dtypes: FLOATS, devices: BOTH_DEVICES,
    samples: [
      { name: 'a [3,1] condition, [3,4] and [4]', inputs: [I([3, 4]), M([3, 1]), I([4])], call: ([a, m, b]) => a.where(m, b) },
      { name: 'a [2,3] condition and a number', inputs: [I([2, 3]), M([2, 3])], call: ([a, m]) => a.where(m, 0.5) },
      { name: 'only other requires grad', inputs: [I([2, 3], { grad: false }), M([3]), I([2, 3])], call: ([a, m, b]) => a.where(m, b) },
      { name: 'a mask from a comparison', inputs: [I([3, 4]), I([3, 4], { grad: false })], call: ([a, b]) => a.where(b.gt(0), b) },
      { name: '[3,1000] with a [1000] condition', inputs: [I([3, 1000]), M([1000]), I([3, 1])], call: ([a, m, b]) => a.where(m, b), gradcheck: false },
    ],
    errors: [
      { name: 'a float condition', call: () => zeros([2]).where(zeros([2]), 1), type: TypeError,
        message: /^Tensor\.where: condition's dtype must be int32 \(a mask of 0 and 1, as the comparisons give\), got "float32"$/, standard: true },
      { name: 'a condition that does not broadcast', call: () => zeros([2, 3]).where(tensor([1, 0], { dtype: 'int32' }), 1), type: RangeError,
        message: /^Tensor\.where: shapes \[2\] and \[2, 3\] cannot be broadcast together \(dim 1: 2 vs 3\)$/ },
      { name: 'other a string', call: () => zeros([2]).where(tensor([1, 0], { dtype: 'int32' }), '1' as unknown as number), type: TypeError,
        message: /^Tensor\.where: other must be a Tensor, got "1"$/, standard: true },
    ],
  },
  {
    // int32 left unset for the reason given at Tensor.where.
    name: 'Tensor.maskedFill', where: ['Tensor.maskedFill', 'Tensor.logSoftmax', 'Tensor.exp'], dtypes: FLOATS, devices: BOTH_DEVICES,
    samples: [
      { name: 'a [3] mask over [2,3], value 2', inputs: [I([2, 3]), M([3])], call: ([x, m]) => x.maskedFill(m, 2) },
      { name: 'a same-shape mask, value -1.5', inputs: [I([3, 4]), M([3, 4])], call: ([x, m]) => x.maskedFill(m, -1.5) },
      // exp() at the end: the -inf of the masked places becomes 0, so outputs are finite (the -inf
      // log-probabilities themselves are checked against torch in ops-torch.test.ts).
      { name: 'a causal mask of -inf, then logSoftmax and exp', inputs: [I([4, 4]), ids([4, 4], [0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0])],
        call: ([x, m]) => x.maskedFill(m, -Infinity).logSoftmax(-1).exp() },
      { name: '[3,1000] with a [3,1] mask', inputs: [I([3, 1000]), M([3, 1])], call: ([x, m]) => x.maskedFill(m, 0), gradcheck: false },
    ],
    errors: [
      { name: 'a mask that does not broadcast to the tensor', call: () => zeros([3]).maskedFill(zeros([2, 3], { dtype: 'int32' }), 0), type: RangeError,
        message: /^Tensor\.maskedFill: mask must be broadcastable to the tensor's shape \[3\], got Tensor\(shape \[2, 3\], int32, cpu\)$/, standard: true },
      { name: 'a float mask', call: () => zeros([3]).maskedFill(zeros([3]), 0), type: TypeError, message: /^Tensor\.maskedFill: mask's dtype must be int32/ },
      { name: 'a string value', call: () => zeros([3]).maskedFill(zeros([3], { dtype: 'int32' }), '0' as unknown as number), type: TypeError,
        message: /^Tensor\.maskedFill: value must be a number, got "0"$/, standard: true },
    ],
  },
  {
    name: 'Tensor.logSoftmax', where: ['Tensor.logSoftmax'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: '[3,4] dim -1 (default)', inputs: [I([3, 4])], call: ([x]) => x.logSoftmax() },
      { name: '[3,4] dim 0', inputs: [I([3, 4])], call: ([x]) => x.logSoftmax(0) },
      { name: '[2,3,4] dim 1', inputs: [I([2, 3, 4])], call: ([x]) => x.logSoftmax(1) },
      { name: 'large values (stability)', inputs: [I([2, 5], { values: scaled(300) })], call: ([x]) => x.logSoftmax() },
      { name: 'rows of 1, 17, 1000, 5000', inputs: [I([3, 1]), I([2, 17]), I([3, 1000]), I([2, 5000])],
        call: (xs) => xs.map((x) => x.logSoftmax(-1)), gradcheck: false, separateInputs: true },
    ],
    errors: [
      { name: 'a dim out of range', call: () => zeros([2, 3]).logSoftmax(2), type: RangeError, message: /^Tensor\.logSoftmax: dim must be in \[-2, 1\], got 2$/, standard: true },
      int32Error('logSoftmax', (x) => x.logSoftmax()),
    ],
  },
  {
    name: 'F.softmax', where: ['F.softmax'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'F.softmax dim -1', inputs: [I([3, 4])], call: ([x]) => F.softmax(x, -1) },
      { name: 'F.softmax dim 0 (default -1 elsewhere)', inputs: [I([3, 4])], call: ([x]) => [F.softmax(x, 0), F.softmax(x)] },
    ],
    errors: [
      { name: 'not a tensor', call: () => F.softmax(null as unknown as Tensor), type: TypeError, message: /^F\.softmax: x must be a Tensor, got null$/, standard: true },
      { name: 'a dim out of range', call: () => F.softmax(zeros([2, 3]), -3), type: RangeError, message: /^F\.softmax: dim must be in \[-2, 1\], got -3$/, standard: true },
    ],
  },
  {
    name: 'F.logSoftmax', where: ['F.logSoftmax'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: 'F.logSoftmax dim -1', inputs: [I([3, 4])], call: ([x]) => F.logSoftmax(x, -1) },
      { name: 'F.logSoftmax dim 0', inputs: [I([3, 4])], call: ([x]) => F.logSoftmax(x, 0) },
    ],
    errors: [
      { name: 'not a tensor', call: () => F.logSoftmax(1 as unknown as Tensor), type: TypeError, message: /^F\.logSoftmax: x must be a Tensor, got 1$/, standard: true },
      { name: 'a dim out of range', call: () => F.logSoftmax(zeros([2]), 1), type: RangeError, message: /^F\.logSoftmax: dim must be in \[-1, 0\], got 1$/, standard: true },
    ],
  },
];
