// Registry entries for slicing and joining: the Tensor methods and the package's cat and stack
// (entries named without an owner are functions of the package).
import { Tensor, cat, stack, tensor, zeros } from '../../lib';
import { I, OpInfo, OpSample, fmt, ids } from './types';

const BOTH_DEVICES: OpInfo['devices'] = ['cpu', 'cuda'];
const FLOATS: OpInfo['dtypes'] = ['float64', 'float32'];

const disposed = (shape: number[]): Tensor => {
  const t = zeros(shape);
  t.dispose();
  return t;
};
const int32 = (values: number[], shape?: number[]): Tensor => tensor(values, { dtype: 'int32', shape });

/** An entry of a Tensor method that takes int32 tensors as floats. */
const entry = (name: string, samples: OpSample[], errors: OpInfo['errors'], where = name): OpInfo =>
  ({ name, where: [where], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES, samples, errors });

const one = (name: string, shape: number[], call: (x: Tensor) => Tensor | Tensor[], gradcheck = true): OpSample =>
  ({ name, inputs: [I(shape)], call: ([x]) => call(x), gradcheck });

export const VIEW_OPS: OpInfo[] = [
  entry('Tensor.narrow', [
    one('narrow(1, 1, 2)', [3, 4], (x) => x.narrow(1, 1, 2)),
    one('narrow(-1, -3, 2) of 3-D', [2, 3, 4], (x) => x.narrow(-1, -3, 2)),
    one('narrow(0, 2, 0): empty', [3, 2], (x) => x.narrow(0, 2, 0)),
    one('two narrows of one tensor, added', [4, 3], (x) => x.narrow(0, 0, 2).add(x.narrow(0, 2, 2))),
    one('[64,33] narrow(1, 5, 17)', [64, 33], (x) => x.narrow(1, 5, 17), false),
  ], [
    { name: 'start past the dim', call: () => zeros([2, 3]).narrow(1, 4, 0), type: RangeError,
      message: /^Tensor\.narrow: start must be in \[-3, 3\] \(dim 1 has size 3\), got 4$/, standard: true },
    { name: 'start + length past the dim', call: () => zeros([2, 3]).narrow(1, 2, 2), type: RangeError,
      message: /^Tensor\.narrow: start \+ length must be at most 3 \(the size of dim 1\), got "2 \+ 2"$/ },
    { name: 'a dim out of range', call: () => zeros([2, 3]).narrow(2, 0, 1), type: RangeError, message: /^Tensor\.narrow: dim must be in \[-2, 1\], got 2$/, standard: true },
    { name: 'a negative length', call: () => zeros([2, 3]).narrow(0, 0, -1), type: RangeError, message: /^Tensor\.narrow: length must be a non-negative integer, got -1$/ },
    { name: 'a 0-d tensor', call: () => zeros([]).narrow(0, 0, 1), type: RangeError, message: /^Tensor\.narrow: the tensor must be at least 1-D/ },
    { name: 'a disposed tensor', call: () => disposed([2, 3]).narrow(0, 0, 1), type: Error, message: /^Tensor\.narrow: tensor has been disposed$/ },
  ]),
  entry('Tensor.slice', [
    one('slice(1, 1, -1, 2)', [3, 6], (x) => x.slice(1, 1, -1, 2)),
    one('slice(0, -2): the last two rows', [4, 3], (x) => x.slice(0, -2)),
    one('slice(-1, null, null, 3)', [2, 2, 7], (x) => x.slice(-1, null, null, 3)),
    one('slice(0, -10, 100): clamped', [3, 2], (x) => x.slice(0, -10, 100)),
    one('slice(1, 4, 2): empty', [2, 5], (x) => x.slice(1, 4, 2)),
    one('[40,50] slice(0, 3, 37, 5)', [40, 50], (x) => x.slice(0, 3, 37, 5), false),
  ], [
    { name: 'step 0', call: () => zeros([4]).slice(0, 0, 4, 0), type: RangeError, message: /^Tensor\.slice: step must be an integer > 0 .*, got 0$/, standard: true },
    { name: 'a negative step', call: () => zeros([4]).slice(0, null, null, -1), type: RangeError, message: /^Tensor\.slice: step must be an integer > 0/ },
    { name: 'a fractional start', call: () => zeros([4]).slice(0, 1.5), type: TypeError, message: /^Tensor\.slice: start must be an integer, got 1\.5$/ },
    { name: 'a dim out of range', call: () => zeros([4]).slice(1), type: RangeError, message: /^Tensor\.slice: dim must be in \[-1, 0\], got 1$/ },
  ]),
  entry('Tensor.select', [
    one('select(0, 1)', [3, 4], (x) => x.select(0, 1)),
    one('select(-1, -1) of 3-D', [2, 3, 4], (x) => x.select(-1, -1)),
    one('select(0, 0) of 1-D: 0-d', [5], (x) => x.select(0, 0)),
    one('every row selected and stacked back', [3, 2], (x) => stack([x.select(0, 2), x.select(0, 0), x.select(0, 2)])),
  ], [
    { name: 'an index past the dim', call: () => zeros([2, 3]).select(1, 3), type: RangeError,
      message: /^Tensor\.select: index must be in \[-3, 2\] \(dim 1 has size 3\), got 3$/, standard: true },
    { name: 'an index before the dim', call: () => zeros([2, 3]).select(0, -3), type: RangeError, message: /^Tensor\.select: index must be in \[-2, 1\]/ },
    { name: 'a 0-d tensor', call: () => zeros([]).select(0, 0), type: RangeError, message: /^Tensor\.select: the tensor must be at least 1-D/ },
  ]),
  entry('Tensor.indexSelect', [
    { name: 'indexSelect(1, [2, 0, 2, 3])', inputs: [I([3, 4]), ids([4], [2, 0, 2, 3])], call: ([x, i]) => x.indexSelect(1, i) },
    { name: 'indexSelect(0, repeats) of 3-D', inputs: [I([3, 2, 2]), ids([5], [1, 1, 0, 1, 2])], call: ([x, i]) => x.indexSelect(0, i) },
    { name: 'indexSelect(-1, empty index)', inputs: [I([2, 3]), ids([0], [])], call: ([x, i]) => x.indexSelect(-1, i) },
    { name: 'indexSelect(0, 0-d index)', inputs: [I([3, 2]), ids([], [2])], call: ([x, i]) => x.indexSelect(0, i) },
    { name: '[50,17] indexSelect(0, 300 ids)', inputs: [I([50, 17]), ids([300], { high: 50 })], call: ([x, i]) => x.indexSelect(0, i), gradcheck: false },
  ], [
    { name: 'an index out of range', call: () => zeros([2, 3]).indexSelect(1, int32([0, 3])), type: RangeError,
      message: /^Tensor\.indexSelect: index\[1\] must be in \[0, 3\) \(the size of dim 1\), got 3$/, standard: true },
    { name: 'a negative index', call: () => zeros([2, 3]).indexSelect(0, int32([-1])), type: RangeError, message: /^Tensor\.indexSelect: index\[0\] must be in \[0, 2\)/ },
    { name: 'a float index', call: () => zeros([2, 3]).indexSelect(0, zeros([1])), type: TypeError, message: /^Tensor\.indexSelect: index must be an int32 tensor of indices/ },
    { name: 'a 2-D index', call: () => zeros([2, 3]).indexSelect(0, int32([0, 1], [1, 2])), type: RangeError, message: /^Tensor\.indexSelect: index must be a 1-D \(or 0-d\) int32 tensor/ },
    { name: 'an array for index', call: () => zeros([2, 3]).indexSelect(0, [0] as unknown as Tensor), type: TypeError, message: /^Tensor\.indexSelect: index must be a Tensor, got \[0\]$/ },
  ]),
  entry('Tensor.gather', [
    { name: 'gather(0, index [2,4])', inputs: [I([3, 4]), ids([2, 4], [0, 2, 1, 2, 2, 2, 0, 0])], call: ([x, i]) => x.gather(0, i) },
    { name: 'gather(1, smaller index [2,3])', inputs: [I([3, 5]), ids([2, 3], [4, 4, 0, 1, 3, 1])], call: ([x, i]) => x.gather(1, i) },
    { name: 'gather(-1, index [2,2,6]) with repeats', inputs: [I([2, 3, 4]), ids([2, 2, 6], { high: 4 })], call: ([x, i]) => x.gather(-1, i) },
    { name: 'gather(0) of a 0-d tensor', inputs: [I([]), ids([], [0])], call: ([x, i]) => x.gather(0, i) },
    { name: '[30,40] gather(1, [30,70])', inputs: [I([30, 40]), ids([30, 70], { high: 40 })], call: ([x, i]) => x.gather(1, i), gradcheck: false },
  ], [
    { name: 'an index out of range', call: () => zeros([2, 3]).gather(1, int32([0, 3, 1, 1], [2, 2])), type: RangeError,
      message: /^Tensor\.gather: index\[0, 1\] must be in \[0, 3\) \(the size of dim 1\), got 3$/, standard: true },
    { name: 'an index of another rank', call: () => zeros([2, 3]).gather(1, int32([0, 1])), type: RangeError, message: /^Tensor\.gather: index must be a 2-D int32 tensor/ },
    { name: 'an index larger in another dim', call: () => zeros([2, 3]).gather(1, int32([0, 0, 0], [3, 1])), type: RangeError,
      message: /^Tensor\.gather: index\.shape\[0\] must be at most 2 .*, got 3$/ },
    { name: 'a float index', call: () => zeros([2, 3]).gather(0, zeros([2, 3])), type: TypeError, message: /^Tensor\.gather: index must be an int32 tensor/ },
  ]),
  entry('Tensor.split', [
    one('split(2, 1)', [2, 5], (x) => x.split(2, 1)),
    one('split([1, 3, 1], 1)', [2, 5], (x) => x.split([1, 3, 1], 1)),
    one('split(3): dim 0 by default', [4, 2], (x) => x.split(3)),
    one('split(2, -1), pieces combined', [3, 4], (x) => { const [a, b] = x.split(2, -1); return a.mul(b); }),
    one('[24,33] split(8, 0)', [24, 33], (x) => x.split(8, 0), false),
  ], [
    { name: 'sizes that do not add up', call: () => zeros([2, 5]).split([1, 3], 1), type: RangeError,
      message: /^Tensor\.split: splitSize must be sizes that add up to 5 \(the size of dim 1\), got \[1, 3\]$/, standard: true },
    { name: 'size 0', call: () => zeros([2, 5]).split(0, 1), type: RangeError, message: /^Tensor\.split: splitSize must be an integer > 0/ },
    { name: 'a string size', call: () => zeros([2, 5]).split('2' as unknown as number), type: TypeError, message: /^Tensor\.split: splitSize must be an integer or an array of integers, got "2"$/ },
  ]),
  entry('Tensor.chunk', [
    one('chunk(3) of 5 rows', [5, 2], (x) => x.chunk(3)),
    one('chunk(4) of 6: 3 pieces', [6], (x) => x.chunk(4)),
    one('chunk(2, -1)', [2, 3, 4], (x) => x.chunk(2, -1)),
    one('chunk(3) of an empty dim: 3 empty pieces', [0, 2], (x) => x.chunk(3)),
  ], [
    { name: '0 chunks', call: () => zeros([4]).chunk(0), type: RangeError, message: /^Tensor\.chunk: chunks must be an integer >= 1, got 0$/, standard: true },
    { name: 'a dim out of range', call: () => zeros([4]).chunk(2, 1), type: RangeError, message: /^Tensor\.chunk: dim must be in \[-1, 0\], got 1$/ },
  ]),
  entry('Tensor.unsqueeze', [
    one('unsqueeze(0)', [2, 3], (x) => x.unsqueeze(0)),
    one('unsqueeze(-1)', [2, 3], (x) => x.unsqueeze(-1)),
    one('unsqueeze(0) of 0-d', [], (x) => x.unsqueeze(0)),
  ], [
    { name: 'a dim out of range', call: () => zeros([2, 3]).unsqueeze(3), type: RangeError, message: /^Tensor\.unsqueeze: dim must be in \[-3, 2\], got 3$/, standard: true },
  ]),
  entry('Tensor.squeeze', [
    one('squeeze()', [1, 3, 1, 2], (x) => x.squeeze()),
    one('squeeze(2)', [1, 3, 1, 2], (x) => x.squeeze(2)),
    one('squeeze(1): not size 1, unchanged', [1, 3, 1, 2], (x) => x.squeeze(1)),
    one('squeeze([0, -2])', [1, 3, 1, 2], (x) => x.squeeze([0, -2])),
  ], [
    { name: 'a dim out of range', call: () => zeros([2, 1]).squeeze(2), type: RangeError, message: /^Tensor\.squeeze: dim must be in \[-2, 1\], got 2$/, standard: true },
    { name: 'a dim of the list out of range', call: () => zeros([2, 1]).squeeze([5]), type: RangeError, message: /^Tensor\.squeeze: dim\[0\] must be in \[-2, 1\], got 5$/ },
    { name: 'a repeated dim in the list', call: () => zeros([2, 1]).squeeze([1, -1]), type: RangeError, message: /^Tensor\.squeeze: dim must be distinct dims, got \[1, -1\]$/ },
  ]),
  entry('Tensor.flatten', [
    one('flatten()', [2, 3, 4], (x) => x.flatten()),
    one('flatten(1)', [2, 3, 4], (x) => x.flatten(1)),
    one('flatten(0, -2)', [2, 3, 4], (x) => x.flatten(0, -2)),
    one('flatten() of 0-d: [1]', [], (x) => x.flatten()),
  ], [
    { name: 'startDim after endDim', call: () => zeros([2, 3, 4]).flatten(2, 1), type: RangeError, message: /^Tensor\.flatten: startDim must be at most endDim \(1\), got 2$/, standard: true },
  ]),
  entry('Tensor.expand', [
    one('expand(2, -1, 3) of [3,1]', [3, 1], (x) => x.expand(2, -1, 3)),
    one('expand([4, 2]) of [1,2]', [1, 2], (x) => x.expand([4, 2])),
    one('expand(3) of 0-d', [], (x) => x.expand(3)),
    one('expand(-1, -1): unchanged', [2, 3], (x) => x.expand(-1, -1)),
    one('[1,37] expand(20, 37)', [1, 37], (x) => x.expand(20, 37), false),
  ], [
    { name: 'a non-singleton dim changed', call: () => zeros([2, 3]).expand(2, 4), type: RangeError,
      message: /^Tensor\.expand: sizes\[1\] must be 3 \(the existing size of dim 1, which is not 1\) or -1; tensor shape \[2, 3\], got 4$/, standard: true },
    { name: 'fewer sizes than dims', call: () => zeros([2, 3]).expand(3), type: RangeError, message: /^Tensor\.expand: sizes must be at least 2 sizes/ },
    { name: '-1 for a new dim', call: () => zeros([3]).expand(-1, 3), type: RangeError, message: /^Tensor\.expand: sizes\[0\] must be a size >= 0 \(-1 only keeps an existing dim\), got -1$/ },
  ]),
  entry('Tensor.contiguous', [
    one('contiguous()', [2, 3], (x) => x.contiguous()),
    one('contiguous() * x', [2, 3], (x) => x.contiguous().mul(x)),
  ], [
    { name: 'a disposed tensor', call: () => disposed([2]).contiguous(), type: Error, message: /^Tensor\.contiguous: tensor has been disposed$/ },
  ]),
  ...(['tril', 'triu'] as const).map((op) => entry(`Tensor.${op}`, [
    one(`${op}()`, [3, 4], (x) => x[op]()),
    one(`${op}(-1) of [2,3,4]`, [2, 3, 4], (x) => x[op](-1)),
    one(`${op}(2) of [4,3]`, [4, 3], (x) => x[op](2)),
    one(`${op}(-9): all or nothing`, [3, 3], (x) => x[op](-9)),
    one(`[3,33,40] ${op}(1)`, [3, 33, 40], (x) => x[op](1), false),
  ], [
    { name: 'a 1-D tensor', call: () => zeros([3])[op](), type: RangeError, message: new RegExp(`^Tensor\\.${op}: the tensor must be at least 2-D`), standard: true },
    { name: 'a fractional diagonal', call: () => zeros([3, 3])[op](0.5), type: TypeError, message: new RegExp(`^Tensor\\.${op}: diagonal must be an integer, got 0\\.5$`) },
  ])),
  {
    name: 'cat', where: ['cat'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'cat([a [2,3], b [2,1], c [2,0]], 1)', inputs: [I([2, 3]), I([2, 1]), I([2, 0])], call: (xs) => cat(xs, 1) },
      { name: 'cat 3-D along -1', inputs: [I([2, 1, 3]), I([2, 1, 2])], call: (xs) => cat(xs, -1) },
      { name: 'cat along 0, skipping an empty [0]', inputs: [I([2, 3]), I([0]), I([1, 3])], call: (xs) => cat(xs) },
      { name: 'cat of one tensor', inputs: [I([3])], call: (xs) => cat(xs) },
      { name: 'the same tensor three times', inputs: [I([2, 2])], call: ([x]) => cat([x, x, x], 0) },
      { name: '[17,33] and [5,33] along 0', inputs: [I([17, 33]), I([5, 33])], call: (xs) => cat(xs, 0), gradcheck: false },
    ],
    errors: [
      { name: 'shapes that differ outside dim', call: () => cat([zeros([2, 3]), zeros([3, 3])], 1), type: RangeError,
        message: /^cat: tensors\[1\]\.shape\[0\] must be 2 as in tensors\[0\] \(shapes must match except in dim 1; got \[2, 3\] and \[3, 3\]\), got 3$/, standard: true },
      { name: 'ranks that differ', call: () => cat([zeros([2, 3]), zeros([3])]), type: RangeError, message: /^cat: tensors\[1\] must be a 2-D tensor like tensors\[0\]/ },
      { name: 'an empty list', call: () => cat([]), type: RangeError, message: /^cat: tensors must be a non-empty array of tensors, got \[\]$/ },
      { name: 'a dim out of range', call: () => cat([zeros([2])], 1), type: RangeError, message: /^cat: dim must be in \[-1, 0\], got 1$/ },
      { name: '0-d tensors', call: () => cat([zeros([]), zeros([])]), type: RangeError, message: /^cat: tensors\[0\] must be at least 1-D/ },
      { name: 'not an array', call: () => cat(zeros([2]) as unknown as Tensor[]), type: TypeError, message: /^cat: tensors must be an array of tensors/ },
      { name: 'a disposed tensor', call: () => cat([zeros([2]), disposed([2])]), type: Error, message: /^cat: tensors\[1\] has been disposed$/ },
    ],
  },
  {
    name: 'stack', where: ['stack'], dtypes: FLOATS, int32: 'supported', devices: BOTH_DEVICES,
    samples: [
      { name: 'stack of three [2,3] along 1', inputs: [I([2, 3]), I([2, 3]), I([2, 3])], call: (xs) => stack(xs, 1) },
      { name: 'stack along -1', inputs: [I([4]), I([4])], call: (xs) => stack(xs, -1) },
      { name: 'stack of 0-d tensors', inputs: [I([]), I([])], call: (xs) => stack(xs) },
      { name: `stack of ${fmt([8, 9])} x3 along 2`, inputs: [I([8, 9]), I([8, 9]), I([8, 9])], call: (xs) => stack(xs, 2), gradcheck: false },
    ],
    errors: [
      { name: 'shapes that differ', call: () => stack([zeros([2, 3]), zeros([2, 2])]), type: RangeError, message: /^stack: tensors\[1\] must be of the shape of tensors\[0\], \[2, 3\]/, standard: true },
      { name: 'a dim out of range', call: () => stack([zeros([2])], 2), type: RangeError, message: /^stack: dim must be in \[-2, 1\], got 2$/ },
    ],
  },
];
