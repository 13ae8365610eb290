// Registry entries for the differentiable Tensor methods.
import { Tensor, tensor, zeros } from '../../lib';

/** A tensor already disposed (its methods must say so under their own name). */
const disposed = (shape: number[]): Tensor => {
  const t = zeros(shape);
  t.dispose();
  return t;
};
import { I, OpInfo, OpSample, awayFromZero, fmt, positive, scaled } from './types';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];

// ------------------------------------------------------------ elementwise

type BinOp = 'add' | 'sub' | 'mul' | 'div';

const BIN_SHAPES: [string, number[], number[]][] = [
  ['equal shapes', [2, 3], [2, 3]],
  ['[3,1] x [1,4]', [3, 1], [1, 4]],
  ['[2,3,4] x [4]', [2, 3, 4], [4]],
  ['[4] x [2,3,4]', [4], [2, 3, 4]],
  ['[2,1,4] x [3,1]', [2, 1, 4], [3, 1]],
  ['0-d x [2,3]', [], [2, 3]],
  ['[2,3] x 0-d', [2, 3], []],
];

const SCALARS: Record<BinOp, number[]> = { add: [2.5], sub: [1.5], mul: [-1.7, 1], div: [3.2, -0.4] };

/** The same tensor on both sides: x values away from 0. */
const SAME_TENSOR: Partial<Record<BinOp, [string, (x: Tensor) => Tensor][]>> = {
  mul: [['x * x', (x) => x.mul(x)]],
  div: [['x / x + x * x', (x) => x.div(x).add(x.mul(x))]],
  sub: [['x - x + x', (x) => x.sub(x).add(x)]],
};

const BIN_ERRORS: Record<BinOp, OpInfo['errors']> = {
  add: [
    { name: 'shapes that do not broadcast', call: () => zeros([2, 3]).add(zeros([4])), type: RangeError,
      message: /^Tensor\.add: shapes \[2, 3\] and \[4\] cannot be broadcast together \(dim 1: 3 vs 4\)$/ },
    { name: 'a string operand', call: () => zeros([2]).add('1' as unknown as number), type: TypeError, message: /^Tensor\.add: other must be a Tensor, got "1"$/ },
    { name: 'float32 with float64', call: () => zeros([2]).add(zeros([2], { dtype: 'float64' })), type: TypeError,
      message: /^Tensor\.add: this is float32 but other is float64/ },
  ],
  sub: [
    { name: 'shapes that do not broadcast', call: () => zeros([2, 3]).sub(zeros([2])), type: RangeError,
      message: /^Tensor\.sub: shapes \[2, 3\] and \[2\] cannot be broadcast together \(dim 1: 3 vs 2\)$/ },
    { name: 'a null operand', call: () => zeros([2]).sub(null as unknown as number), type: TypeError, message: /^Tensor\.sub: other must be a Tensor, got null$/ },
  ],
  mul: [
    { name: 'shapes that do not broadcast', call: () => zeros([2, 3]).mul(zeros([3, 3])), type: RangeError,
      message: /^Tensor\.mul: shapes \[2, 3\] and \[3, 3\] cannot be broadcast/ },
  ],
  div: [
    { name: 'shapes that do not broadcast', call: () => zeros([2, 3]).div(zeros([3, 2])), type: RangeError,
      message: /^Tensor\.div: shapes \[2, 3\] and \[3, 2\] cannot be broadcast together \(dim 0: 2 vs 3\)$/ },
    { name: 'a string operand', call: () => zeros([2]).div('2' as unknown as number), type: TypeError, message: /^Tensor\.div: other must be a Tensor, got "2"$/ },
  ],
};

function binary(op: BinOp): OpInfo {
  const awayIfDiv = op === 'div' ? awayFromZero(0.5) : undefined;
  const samples: OpSample[] = [
    ...BIN_SHAPES.map(([name, sa, sb]): OpSample => ({
      name, inputs: [I(sa), I(sb, { values: awayIfDiv })], call: ([a, b]) => a[op](b),
    })),
    { name: 'only the left operand requires grad', inputs: [I([3, 4]), I([4], { grad: false, values: awayFromZero(0.5) })], call: ([a, b]) => a[op](b) },
    { name: 'only the right operand requires grad', inputs: [I([3, 1], { grad: false }), I([3, 4], { values: awayFromZero(0.5) })], call: ([a, b]) => a[op](b) },
    ...SCALARS[op].map((s): OpSample => ({ name: `a scalar number operand ${s}`, inputs: [I([2, 3])], call: ([a]) => a[op](s) })),
    ...(SAME_TENSOR[op] ?? []).map(([name, f]): OpSample => ({ name: `the same tensor on both sides: ${name}`, inputs: [I([5], { values: awayFromZero(0.5) })], call: ([x]) => f(x) })),
    // Sizes for the device kernels: odd lengths, a long row broadcast, a scalar.
    { name: '[17] . [17]', inputs: [I([17]), I([17], { values: positive })], call: ([a, b]) => a[op](b), gradcheck: false },
    { name: '[3,1000] . [1000]', inputs: [I([3, 1000]), I([1000], { values: positive })], call: ([a, b]) => a[op](b), gradcheck: false },
    { name: '[2,1,5] . [3,1]', inputs: [I([2, 1, 5]), I([3, 1], { values: positive })], call: ([a, b]) => a[op](b), gradcheck: false },
    { name: '[1] . scalar 1.5', inputs: [I([1])], call: ([a]) => a[op](1.5), gradcheck: false },
  ];
  return { name: `Tensor.${op}`, where: [`Tensor.${op}`], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, samples, errors: BIN_ERRORS[op],
    // A broadcast operand's gradient sums products each rounded to the half type, with
    // cancellation (a 0-d operand's: the sum of every product): 10u for bfloat16.
    tolHalf: { bfloat16: 4e-2, float16: 5e-3 } };
}

type UnarySample = [string, (x: Tensor) => Tensor | Tensor[], ((v: number) => number) | undefined, number[]?];

function unary(op: string, samples: UnarySample[], parity: OpSample[], errors: OpInfo['errors'] = []): OpInfo {
  return {
    name: `Tensor.${op}`,
    where: [`Tensor.${op}`],
    dtypes: FLOATS,
    int32: 'refused',
    devices: BOTH_DEVICES,
    samples: [
      ...samples.map(([name, call, values, shape]): OpSample => ({ name, inputs: [I(shape ?? [3, 4], { values })], call: ([x]) => call(x) })),
      ...parity.map((s) => ({ ...s, gradcheck: false })),
    ],
    errors,
  };
}

const large = (name: string, shape: number[], call: (x: Tensor) => Tensor | Tensor[], values?: (v: number) => number): OpSample =>
  ({ name, inputs: [I(shape, { values })], call: ([x]) => call(x) });

const TAILS = scaled(4); // saturated tails of gelu and silu

// ------------------------------------------------------------ reductions

const REDUCE_DIMS: [string, number | number[] | undefined, boolean][] = [
  ['all', undefined, false],
  ['dim 1', 1, false],
  ['dim -1', -1, false],
  ['dim -3', -3, false],
  ['dims [0, 2]', [0, 2], false],
  ['dims [-1, 0]', [-1, 0], false],
  ['dim 1 keepdim', 1, true],
  ['dims [0, 2] keepdim', [0, 2], true],
  ['all keepdim', undefined, true],
];

// ------------------------------------------------------------ matmul

const MATMUL_SHAPES: [string, number[], number[]][] = [
  ['1-D . 1-D', [4], [4]],
  ['2-D . 1-D', [3, 4], [4]],
  ['1-D . 2-D', [4], [4, 5]],
  ['2-D . 2-D', [3, 4], [4, 5]],
  ['[2,3,4] . [4,5]', [2, 3, 4], [4, 5]],
  ['[2,3,4] . [2,4,5]', [2, 3, 4], [2, 4, 5]],
  ['[2,1,3,4] . [5,4,2] (batch broadcast)', [2, 1, 3, 4], [5, 4, 2]],
  ['[3,4] . [2,4,5] (2-D broadcast over batch)', [3, 4], [2, 4, 5]],
  ['[2,3,4] . [4] (batched . 1-D)', [2, 3, 4], [4]],
  ['[4] . [2,4,5] (1-D . batched)', [4], [2, 4, 5]],
  ['[1,3,4] . [2,4,5] (size-1 batch)', [1, 3, 4], [2, 4, 5]],
];

// ------------------------------------------------------------ the entries

export const TENSOR_OPS: OpInfo[] = [
  ...(['add', 'sub', 'mul', 'div'] as const).map(binary),

  unary('neg', [['neg', (x) => x.neg(), undefined]], [large('[1000]', [1000], (x) => x.neg(), positive)]),
  unary('relu', [['relu (away from 0)', (x) => x.relu(), awayFromZero(0.05)]], [large('[3,17]', [3, 17], (x) => x.relu())], [
    { name: 'an int32 tensor', call: () => tensor([1, 2], { dtype: 'int32' }).relu(), type: RangeError,
      message: /^Tensor\.relu: the tensor's dtype must be float32, float64, bfloat16 or float16, got "int32"$/ },
  ]),
  unary('gelu', [
    ["approximate 'none'", (x) => x.gelu('none'), undefined],
    ["approximate 'tanh'", (x) => x.gelu('tanh'), undefined],
    ['default', (x) => x.gelu(), undefined],
    ["approximate 'none' at large |x| (saturated tails)", (x) => x.gelu('none'), TAILS, [6]],
    ["approximate 'tanh' at large |x| (saturated tails)", (x) => x.gelu('tanh'), TAILS, [6]],
  ], [large('exact and tanh [1000]', [1000], (x) => [x.gelu(), x.gelu('tanh')])], [
    { name: 'an unknown approximation', call: () => zeros([2]).gelu('fast' as 'tanh'), type: RangeError,
      message: /^Tensor\.gelu: approximate must be one of "none", "tanh", got "fast"$/, standard: true },
  ]),
  unary('silu', [
    ['silu', (x) => x.silu(), undefined],
    ['at large |x| (saturated tails)', (x) => x.silu(), TAILS, [6]],
  ], [large('[3,17]', [3, 17], (x) => x.silu())]),
  unary('exp', [['exp', (x) => x.exp(), undefined]], [large('[1000]', [1000], (x) => x.exp(), positive)]),
  unary('log', [['log (positive inputs)', (x) => x.log(), positive]], [large('[1000]', [1000], (x) => x.log(), positive)]),
  unary('sqrt', [['sqrt (positive inputs)', (x) => x.sqrt(), positive]], [large('[1000]', [1000], (x) => x.sqrt(), positive)]),
  unary('abs', [['abs (away from 0)', (x) => x.abs(), awayFromZero(0.05)]], [large('[3,17]', [3, 17], (x) => x.abs())]),

  {
    name: 'Tensor.softmax', where: ['Tensor.softmax'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      { name: '[3,4] dim -1 (default)', inputs: [I([3, 4])], call: ([x]) => x.softmax() },
      { name: '[3,4] dim 0', inputs: [I([3, 4])], call: ([x]) => x.softmax(0) },
      { name: '[2,3,4] dim 1', inputs: [I([2, 3, 4])], call: ([x]) => x.softmax(1) },
      { name: '[2,1] (rows of one element)', inputs: [I([2, 1])], call: ([x]) => x.softmax(-1) },
      { name: 'rows of 1, 17, 1000, 5000', inputs: [I([3, 1]), I([2, 17]), I([3, 1000]), I([2, 5000])],
        call: (xs) => xs.map((x) => x.softmax(-1)), gradcheck: false, separateInputs: true },
    ],
    errors: [
      { name: 'a dim out of range', call: () => zeros([2, 3]).softmax(2), type: RangeError, message: /^Tensor\.softmax: dim must be in \[-2, 1\], got 2$/, standard: true },
      { name: 'a string dim', call: () => zeros([2]).softmax('0' as unknown as number), type: TypeError, message: /^Tensor\.softmax: dim must be an integer, got "0"$/ },
    ],
  },

  {
    name: 'Tensor.sum', where: ['Tensor.sum'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      ...REDUCE_DIMS.map(([name, dim, keepdim]): OpSample => ({ name, inputs: [I([2, 3, 4])], call: ([x]) => x.sum(dim, keepdim) })),
      { name: 'a 1-D tensor over dim 0', inputs: [I([5])], call: ([x]) => x.sum(0) },
      { name: 'over all, dims and keepdim [3,17,5]', inputs: [I([3, 17, 5])], call: ([a]) => [a.sum(), a.sum(0), a.sum([0, 2]), a.sum(1)], gradcheck: false },
      { name: 'a large tensor (split reduction)', inputs: [I([1000, 1000])], call: ([a]) => [a.sum(), a.sum(0), a.sum(1)], gradcheck: false },
    ],
    errors: [
      { name: 'a dim out of range', call: () => zeros([2, 3]).sum(2), type: RangeError, message: /^Tensor\.sum: dim must be in \[-2, 1\], got 2$/ },
      { name: 'keepdim not a boolean', call: () => zeros([2, 3]).sum(0, 1 as unknown as boolean), type: TypeError, message: /^Tensor\.sum: keepdim must be a boolean, got 1$/, standard: true },
      { name: 'a string dim', call: () => zeros([2, 3]).sum('0' as unknown as number), type: TypeError, message: /^Tensor\.sum: dim must be an integer or an array of integers, got "0"$/ },
    ],
  },
  {
    name: 'Tensor.mean', where: ['Tensor.mean'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES,
    samples: [
      ...REDUCE_DIMS.map(([name, dim, keepdim]): OpSample => ({ name, inputs: [I([2, 3, 4])], call: ([x]) => x.mean(dim, keepdim) })),
      { name: 'a 0-d tensor', inputs: [I([])], call: ([x]) => x.mean() },
      { name: 'over all and dims with keepdim [3,17,5]', inputs: [I([3, 17, 5])], call: ([a]) => [a.mean(), a.mean(-1, true)], gradcheck: false },
    ],
    errors: [
      { name: 'a dim out of range', call: () => zeros([2, 3]).mean(5), type: RangeError, message: /^Tensor\.mean: dim must be in \[-2, 1\], got 5$/, standard: true },
      { name: 'a repeated dim', call: () => zeros([2, 3]).mean([0, 0]), type: RangeError, message: /^Tensor\.mean: dim must be distinct dims, got \[0, 0\]$/ },
      { name: 'keepdim not a boolean', call: () => zeros([2, 3]).mean(0, 'yes' as unknown as boolean), type: TypeError, message: /^Tensor\.mean: keepdim must be a boolean, got "yes"$/, standard: true },
    ],
  },

  {
    name: 'Tensor.matmul', where: ['Tensor.matmul'], dtypes: FLOATS, int32: 'refused', devices: BOTH_DEVICES, tol32: 5e-5,
    samples: [
      ...MATMUL_SHAPES.map(([name, sa, sb]): OpSample => ({ name, inputs: [I(sa), I(sb)], call: ([a, b]) => a.matmul(b) })),
      { name: 'only the left side requires grad', inputs: [I([2, 3, 4]), I([4, 5], { grad: false })], call: ([a, b]) => a.matmul(b) },
      { name: 'only the right side requires grad', inputs: [I([3, 4], { grad: false }), I([2, 4, 5])], call: ([a, b]) => a.matmul(b) },
      { name: '2-D, 1-D and broadcast batches at odd sizes', inputs: [I([17, 33]), I([33, 3]), I([33]), I([4, 3, 17]), I([17, 5])],
        call: ([a, b, v, c, d]) => [a.matmul(b), a.matmul(v), v.matmul(b), c.matmul(d)], gradcheck: false },
    ],
    errors: [
      { name: 'mismatched inner dims', call: () => zeros([2, 3]).matmul(zeros([4, 5])), type: RangeError,
        message: /^Tensor\.matmul: shapes \[2, 3\] and \[4, 5\] cannot be multiplied \(3 != 4\)$/ },
      { name: 'mismatched 1-D operands', call: () => zeros([3]).matmul(zeros([4])), type: RangeError, message: /cannot be multiplied \(3 != 4\)/ },
      { name: 'batch dims that do not broadcast', call: () => zeros([2, 2, 3]).matmul(zeros([3, 3, 4])), type: RangeError, message: /batch dims .* cannot be broadcast/ },
      { name: 'a 0-d operand', call: () => zeros([]).matmul(zeros([2])), type: RangeError, message: /both operands must be at least 1-D/ },
    ],
  },

  {
    name: 'Tensor.reshape', where: ['Tensor.reshape'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      ...([[4, -1], [-1], [2, -1, 2], [24], [1, 2, 12]] as number[][]).map((shape): OpSample => ({
        name: `to ${fmt(shape)}`, inputs: [I([2, 3, 4])], call: ([x]) => x.reshape(shape),
      })),
      { name: 'with varargs (3, -1)', inputs: [I([2, 3, 4])], call: ([x]) => x.reshape(3, -1) },
      { name: 'then an op on the same storage: x.reshape(3, 3) * x.reshape(3, 3).t()', inputs: [I([9])], call: ([x]) => x.reshape(3, 3).mul(x.reshape(3, 3).t()) },
    ],
    errors: [
      { name: 'an incompatible shape', call: () => zeros([2, 3]).reshape(4, 2), type: RangeError,
        message: /^Tensor\.reshape: shape must be one with 6 elements \(from shape \[2, 3\]\), got \[4, 2\]$/, standard: true },
      { name: '-1 that does not fit', call: () => zeros([2, 3]).reshape(-1, 4), type: RangeError, message: /shape must be compatible with 6 elements.*got \[-1, 4\]$/ },
      { name: 'two -1', call: () => zeros([2, 3]).reshape(-1, -1), type: RangeError, message: /shape must be at most one -1, got \[-1, -1\]$/ },
      { name: 'a fractional dim', call: () => zeros([2, 3]).reshape(2, 1.5), type: RangeError, message: /shape\[1\] must be a non-negative integer, got 1\.5$/ },
    ],
  },
  {
    name: 'Tensor.view', where: ['Tensor.view'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [{ name: 'view(-1, 6)', inputs: [I([2, 3, 4])], call: ([x]) => x.view(-1, 6) }],
    errors: [
      { name: 'an incompatible shape', call: () => zeros([2, 3]).view(4, 2), type: RangeError,
        message: /^Tensor\.view: shape must be one with 6 elements \(from shape \[2, 3\]\), got \[4, 2\]$/, standard: true },
      { name: 'a disposed tensor', call: () => disposed([2, 3]).view(3, 2), type: Error, message: /^Tensor\.view: tensor has been disposed$/ },
    ],
  },
  {
    name: 'Tensor.transpose', where: ['Tensor.transpose'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      ...([[0, 2], [1, 2], [-1, -2], [0, 0]] as [number, number][]).map(([d0, d1]): OpSample => ({
        name: `transpose(${d0}, ${d1})`, inputs: [I([2, 3, 4])], call: ([x]) => x.transpose(d0, d1),
      })),
      { name: '[6,17] transpose(0, 1) * 2', inputs: [I([6, 17])], call: ([a]) => a.transpose(0, 1).mul(2), gradcheck: false },
      // dims 0 and -1 both name the one dim torch gives a 0-d tensor: a copy.
      { name: 'transpose(0, -1) of a 0-d tensor', inputs: [I([])], call: ([x]) => x.transpose(0, -1) },
    ],
    errors: [
      { name: 'a dim out of range', call: () => zeros([2, 3]).transpose(0, 2), type: RangeError, message: /^Tensor\.transpose: dim1 must be in \[-2, 1\], got 2$/, standard: true },
      { name: 'a string dim', call: () => zeros([2, 3]).transpose('a' as unknown as number, 0), type: TypeError, message: /^Tensor\.transpose: dim0 must be an integer, got "a"$/ },
      { name: 'a disposed tensor', call: () => disposed([2, 3]).transpose(0, 1), type: Error, message: /^Tensor\.transpose: tensor has been disposed$/ },
    ],
  },
  {
    name: 'Tensor.permute', where: ['Tensor.permute'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      ...([[2, 0, 1], [1, 2, 0], [0, 1, 2], [-1, 0, 1]] as number[][]).map((perm): OpSample => ({
        name: `permute(${fmt(perm)})`, inputs: [I([2, 3, 4])], call: ([x]) => x.permute(perm),
      })),
      { name: 'with 4 dims (varargs)', inputs: [I([2, 3, 2, 4])], call: ([x]) => x.permute(3, 1, 0, 2) },
      { name: 'permute(2, 0, 1) + 1', inputs: [I([2, 3, 17])], call: ([a]) => a.permute(2, 0, 1).add(1), gradcheck: false },
    ],
    errors: [
      { name: 'a repeated dim', call: () => zeros([2, 3]).permute(0, 0), type: RangeError, message: /^Tensor\.permute: dims must be a permutation \(no repeats\)/ },
      { name: 'too few dims', call: () => zeros([2, 3]).permute(0), type: RangeError, message: /^Tensor\.permute: dims must be a permutation of 2 dims, got \[0\]$/, standard: true },
    ],
  },
  {
    name: 'Tensor.t', where: ['Tensor.t'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [{ name: 't()', inputs: [I([3, 5])], call: ([x]) => x.t() }],
    errors: [
      { name: 'a 3-D tensor', call: () => zeros([2, 3, 4]).t(), type: RangeError, message: /^Tensor\.t: the tensor must be a 2-D tensor/ },
      { name: 'a disposed tensor', call: () => disposed([2, 3]).t(), type: Error, message: /^Tensor\.t: tensor has been disposed$/ },
    ],
  },
  {
    name: 'Tensor.clone', where: ['Tensor.clone'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'clone()', inputs: [I([2, 3])], call: ([x]) => x.clone() },
      { name: 'clone() * x', inputs: [I([2, 3])], call: ([x]) => x.clone().mul(x) },
    ],
    errors: [],
  },
  {
    name: 'Tensor.to', where: ['Tensor.to'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'to the other float dtype and back', inputs: [I([3, 4])],
        call: ([x], ctx) => x.to(ctx.dtype === 'float64' ? 'float32' : 'float64').to(ctx.dtype),
        // Through float32: steps large enough that its rounding does not swamp the difference.
        gradcheck: { eps: 1e-2, atol: 1e-4, rtol: 1e-3 } },
      { name: 'to() and back, copy_ across devices', inputs: [I([3, 17])],
        call: ([a], { device, dtype }) => [a.to('cpu').mul(3).to(device), zeros([3, 17], { dtype, device }).copy_(a.detach().to('cpu'))] },
    ],
    errors: [
      { name: 'an unknown target', call: () => zeros([2]).to('int8' as 'float32'), type: RangeError,
        message: /^Tensor\.to: target must be a device \('cpu', 'cuda' or 'cuda:N'\) or a dtype \('float32', 'float64', 'int32', 'bfloat16' or 'float16'\), got "int8"$/, standard: true },
      { name: 'a target that is not a string', call: () => zeros([2]).to(0 as unknown as 'cpu'), type: TypeError,
        message: /^Tensor\.to: target must be a device \('cpu', 'cuda' or 'cuda:N'\) or a dtype \('float32', 'float64', 'int32', 'bfloat16' or 'float16'\), got 0$/, standard: true },
    ],
  },
  {
    name: 'Tensor.cpu', where: ['Tensor.cpu'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'cpu()', inputs: [I([3, 4])], call: ([x]) => x.cpu() },
      { name: 'cpu() * 2, then back', inputs: [I([3, 17])], call: ([x], { device }) => x.cpu().mul(2).to(device) },
    ],
    errors: [{ name: 'a disposed tensor', call: () => disposed([2]).cpu(), type: Error, message: /^Tensor\.cpu: tensor has been disposed$/ }],
  },
  {
    name: 'Tensor.cuda', where: ['Tensor.cuda'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'cuda() and back', inputs: [I([3, 4])], call: ([x], { device }) => x.cuda().to(device), needsCuda: true },
      { name: 'cuda() * 2, then back', inputs: [I([3, 17])], call: ([x], { device }) => x.cuda().mul(2).to(device), needsCuda: true },
    ],
    errors: [
      { name: 'a negative index', call: () => zeros([2]).cuda(-1), type: RangeError, message: /^Tensor\.cuda: index must be a non-negative integer, got -1$/, standard: true },
      { name: 'a fractional index', call: () => zeros([2]).cuda(1.5), type: RangeError, message: /^Tensor\.cuda: index must be a non-negative integer, got 1\.5$/ },
      // Without CUDA no device is available; with it, device 99 does not exist.
      { name: 'a device that is not there', call: () => zeros([2]).cuda(99), type: RangeError, message: /^Tensor\.cuda: device "cuda:99" (is not available|does not exist) \(/ },
      { name: 'a disposed tensor', call: () => disposed([2]).cuda(), type: Error, message: /^Tensor\.cuda: tensor has been disposed$/ },
    ],
  },
];
