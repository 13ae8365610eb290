// Slicing and joining, as torch has them: narrow, slice, select, split, chunk, unsqueeze,
// squeeze, flatten, expand, contiguous, cat, stack, gather, indexSelect, tril and triu. The
// arguments are checked here (negative dims and indices count from the end, as in torch), then
// lib/ops/views.ts computes.
//
// Tensors in this library are always contiguous, so the results of narrow, slice, select,
// split, chunk and expand are copies, not views sharing storage as in torch: an in-place write
// (copy_, fill_, an optimiser step) to one of them does not change the tensor it came from, nor
// the other way round. Gradients flow as in torch. unsqueeze, squeeze and flatten only change
// the shape, and share storage as reshape does.
import type { Tensor } from './tensor';
import { assertTensor, normalizeDim, requireSame, requireSameDevice } from './checks';
import { checkInt, rangeError, typeError } from './errors';
import { numelOf } from './shape';
import * as ops from './ops/views';
import { reshape } from './ops/shape';

const shapeStr = (s: readonly number[]): string => `[${s.join(', ')}]`;

function checkInteger(where: string, what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw typeError(where, what, 'an integer', v);
  return v;
}

/** A dim of a tensor with at least one dim (torch refuses dims of 0-d tensors in these ops). */
function dimOf(where: string, t: Tensor, dim: unknown, what = 'dim'): number {
  if (t.ndim === 0) throw rangeError(where, 'the tensor', 'at least 1-D (a 0-d tensor has no dim to index)', t);
  return normalizeDim(where, what, dim, t.ndim);
}

/** The contiguous region [start, start + length) with `step` along dim, the other dims whole. */
function regionAlong(shape: readonly number[], dim: number, start: number, length: number, step: number): ops.Region {
  const strides = ops.stridesOf(shape);
  const sizes = shape.slice();
  sizes[dim] = length;
  const offset = length > 0 ? start * strides[dim] : 0;
  const st = strides.slice();
  st[dim] = strides[dim] * step;
  return { sizes, strides: st, offset };
}

function narrowUnchecked(t: Tensor, dim: number, start: number, length: number): Tensor {
  return ops.region(t, regionAlong(t.shape, dim, start, length, 1));
}

/** Tensor.narrow: length elements from start along dim (start may be negative). */
export function narrow(t: Tensor, dim: unknown, start: unknown, length: unknown): Tensor {
  const where = 'Tensor.narrow';
  t._checkLive(where);
  const d = dimOf(where, t, dim);
  const size = t.shape[d];
  let s = checkInteger(where, 'start', start);
  if (s < -size || s > size) throw rangeError(where, 'start', `in [${-size}, ${size}] (dim ${d} has size ${size})`, start);
  if (s < 0) s += size;
  const n = checkInt(where, 'length', length);
  if (s + n > size) throw rangeError(where, 'start + length', `at most ${size} (the size of dim ${d})`, `${s} + ${n}`);
  return narrowUnchecked(t, d, s, n);
}

/**
 * Tensor.slice: dim's elements start, start + step, ... before end, as Python's x[start:end:step]
 * along one dim in torch: start and end may be negative (from the end), null/undefined (the
 * ends of the dim) or past the dim (clamped); step > 0.
 */
export function slice(t: Tensor, dim: unknown, start: unknown, end: unknown, step: unknown): Tensor {
  const where = 'Tensor.slice';
  t._checkLive(where);
  const d = dimOf(where, t, dim);
  const size = t.shape[d];
  const bound = (what: string, v: unknown, dflt: number): number => {
    if (v === undefined || v === null) return dflt;
    let i = checkInteger(where, what, v);
    if (i < 0) i += size;
    return Math.min(Math.max(i, 0), size);
  };
  const s = bound('start', start, 0);
  const e = bound('end', end, size);
  const k = step === undefined || step === null ? 1 : checkInteger(where, 'step', step);
  if (k <= 0) throw rangeError(where, 'step', 'an integer > 0 (torch slices have no negative steps)', step);
  const length = e > s ? Math.ceil((e - s) / k) : 0;
  return ops.region(t, regionAlong(t.shape, d, s, length, k));
}

/** Tensor.select: the slice at index along dim, without that dim. */
export function select(t: Tensor, dim: unknown, index: unknown): Tensor {
  const where = 'Tensor.select';
  t._checkLive(where);
  const d = dimOf(where, t, dim);
  const size = t.shape[d];
  const i = checkInteger(where, 'index', index);
  if (i < -size || i >= size) throw rangeError(where, 'index', `in [${-size}, ${size - 1}] (dim ${d} has size ${size})`, index);
  const r = regionAlong(t.shape, d, i < 0 ? i + size : i, 1, 1);
  r.sizes.splice(d, 1);
  r.strides.splice(d, 1);
  return ops.region(t, r);
}

/** Tensor.split: pieces of splitSize along dim (the last may be smaller), or of the given sizes. */
export function split(t: Tensor, splitSize: unknown, dim: unknown): Tensor[] {
  const where = 'Tensor.split';
  t._checkLive(where);
  const d = dimOf(where, t, dim);
  const size = t.shape[d];
  let sizes: number[];
  if (Array.isArray(splitSize)) {
    sizes = splitSize.map((s, i) => checkInt(where, `splitSize[${i}]`, s));
    const total = sizes.reduce((a, b) => a + b, 0);
    if (total !== size) throw rangeError(where, 'splitSize', `sizes that add up to ${size} (the size of dim ${d})`, splitSize);
  } else {
    if (typeof splitSize !== 'number') throw typeError(where, 'splitSize', 'an integer or an array of integers', splitSize);
    const n = checkInt(where, 'splitSize', splitSize);
    if (n === 0 && size > 0) throw rangeError(where, 'splitSize', `an integer > 0 (dim ${d} has size ${size})`, splitSize);
    const count = n === 0 ? 1 : Math.max(1, Math.ceil(size / n));
    sizes = Array.from({ length: count }, (_, i) => Math.min(n, size - i * n));
  }
  let start = 0;
  return sizes.map((n) => {
    const piece = narrowUnchecked(t, d, start, n);
    start += n;
    return piece;
  });
}

/** Tensor.chunk: at most `chunks` pieces of ceil(size / chunks) along dim, as torch.chunk. */
export function chunk(t: Tensor, chunks: unknown, dim: unknown): Tensor[] {
  const where = 'Tensor.chunk';
  t._checkLive(where);
  const n = checkInt(where, 'chunks', chunks, 1);
  const d = dimOf(where, t, dim);
  const size = t.shape[d];
  const each = Math.ceil(size / n);
  if (each === 0) return Array.from({ length: n }, () => narrowUnchecked(t, d, 0, 0)); // an empty dim: `chunks` empty pieces, as torch
  const pieces: Tensor[] = [];
  for (let start = 0; start < size; start += each) pieces.push(narrowUnchecked(t, d, start, Math.min(each, size - start)));
  return pieces;
}

/** Tensor.unsqueeze: a dim of size 1 inserted at dim (in [-ndim - 1, ndim]). */
export function unsqueeze(t: Tensor, dim: unknown): Tensor {
  const where = 'Tensor.unsqueeze';
  t._checkLive(where);
  const d = normalizeDim(where, 'dim', dim, t.ndim + 1);
  const shape = t.shape.slice();
  shape.splice(d, 0, 1);
  return reshape(t, shape);
}

/** Tensor.squeeze: every size-1 dim removed, or those of dim (one or a list) that have size 1. */
export function squeeze(t: Tensor, dim: unknown): Tensor {
  const where = 'Tensor.squeeze';
  t._checkLive(where);
  let dims: number[];
  if (dim === undefined || dim === null) {
    dims = t.shape.flatMap((s, i) => (s === 1 ? [i] : []));
  } else {
    const list = Array.isArray(dim) ? dim : [dim];
    dims = list.map((x, i) => normalizeDim(where, Array.isArray(dim) ? `dim[${i}]` : 'dim', x, t.ndim));
    if (new Set(dims).size !== dims.length) throw rangeError(where, 'dim', 'distinct dims', dim);
    if (t.ndim === 0) dims = [];
  }
  const shape = t.shape.filter((s, i) => !(dims.includes(i) && s === 1));
  return reshape(t, shape);
}

/** Tensor.flatten: dims startDim..endDim merged into one (a 0-d tensor becomes [1]). */
export function flatten(t: Tensor, startDim: unknown, endDim: unknown): Tensor {
  const where = 'Tensor.flatten';
  t._checkLive(where);
  const s = normalizeDim(where, 'startDim', startDim, t.ndim);
  const e = normalizeDim(where, 'endDim', endDim, t.ndim);
  if (s > e) throw rangeError(where, 'startDim', `at most endDim (${e})`, startDim);
  if (t.ndim === 0) return reshape(t, [1]);
  const shape = [...t.shape.slice(0, s), numelOf(t.shape.slice(s, e + 1)), ...t.shape.slice(e + 1)];
  return reshape(t, shape);
}

/**
 * Tensor.expand: the tensor broadcast to `sizes` (at least its dims; new dims in front); -1
 * keeps a dim's size. A copy here; the gradient sums over the broadcast dims.
 */
export function expand(t: Tensor, sizes: readonly unknown[]): Tensor {
  const where = 'Tensor.expand';
  t._checkLive(where);
  const want = (Array.isArray(sizes[0]) ? sizes[0] : sizes) as readonly unknown[];
  if (want.length < t.ndim) {
    throw rangeError(where, 'sizes', `at least ${t.ndim} sizes (the tensor's dims) for shape ${shapeStr(t.shape)}`, want);
  }
  const lead = want.length - t.ndim;
  const shape = want.map((v, i) => {
    const n = checkInteger(where, `sizes[${i}]`, v);
    if (i < lead) {
      if (n < 0) throw rangeError(where, `sizes[${i}]`, 'a size >= 0 (-1 only keeps an existing dim)', v);
      return n;
    }
    const have = t.shape[i - lead];
    if (n === -1) return have;
    if (n < 0) throw rangeError(where, `sizes[${i}]`, 'a size >= 0, or -1 to keep the dim', v);
    if (have !== 1 && n !== have) {
      throw rangeError(where, `sizes[${i}]`, `${have} (the existing size of dim ${i - lead}, which is not 1) or -1; tensor shape ${shapeStr(t.shape)}`, v);
    }
    return n;
  });
  if (numelOf(shape) > Number.MAX_SAFE_INTEGER) throw rangeError(where, 'sizes', 'a shape with at most 2^53 - 1 elements', want);
  return ops.expand(t, shape);
}

/** The tensors of a cat or stack: a non-empty array of live tensors of one dtype and device. */
function checkList(where: string, tensors: unknown): Tensor[] {
  if (!Array.isArray(tensors)) throw typeError(where, 'tensors', 'an array of tensors', tensors);
  if (tensors.length === 0) throw rangeError(where, 'tensors', 'a non-empty array of tensors', tensors);
  tensors.forEach((t, i) => {
    assertTensor(where, `tensors[${i}]`, t);
    t._checkLive(where, `tensors[${i}]`);
    if (i > 0) requireSame(where, tensors[0], 'tensors[0]', t, `tensors[${i}]`);
  });
  return tensors as Tensor[];
}

/**
 * cat: the tensors joined along dim. Shapes must match except along dim; 1-D empty tensors
 * (shape [0]) are skipped, as torch does.
 */
export function cat(where: string, tensors: unknown, dim: unknown): Tensor {
  const all = checkList(where, tensors);
  const used = all.filter((t) => !(t.ndim === 1 && t.shape[0] === 0));
  if (used.length === 0) return ops.cat({ shape: [0], dim: 0, starts: all.map(() => 0) }, ...all);
  const ref = used[0];
  const iref = all.indexOf(ref);
  if (ref.ndim === 0) throw rangeError(where, `tensors[${iref}]`, 'at least 1-D (0-d tensors cannot be concatenated; use stack)', ref);
  const d = normalizeDim(where, 'dim', dim, ref.ndim);
  const starts: number[] = [];
  let total = 0;
  all.forEach((t, i) => {
    starts.push(total);
    if (t.ndim === 1 && t.shape[0] === 0) return;
    if (t.ndim !== ref.ndim) {
      throw rangeError(where, `tensors[${i}]`, `a ${ref.ndim}-D tensor like tensors[${iref}] (shape ${shapeStr(ref.shape)})`, t);
    }
    t.shape.forEach((s, k) => {
      if (k !== d && s !== ref.shape[k]) {
        throw rangeError(where, `tensors[${i}].shape[${k}]`,
          `${ref.shape[k]} as in tensors[${iref}] (shapes must match except in dim ${d}; got ${shapeStr(ref.shape)} and ${shapeStr(t.shape)})`, s);
      }
    });
    total += t.shape[d];
  });
  const shape = ref.shape.slice();
  shape[d] = total;
  return ops.cat({ shape, dim: d, starts }, ...all);
}

/** stack: tensors of one shape joined along a new dim (in [-ndim - 1, ndim]). */
export function stack(where: string, tensors: unknown, dim: unknown): Tensor {
  const all = checkList(where, tensors);
  const ref = all[0];
  all.forEach((t, i) => {
    if (t.ndim !== ref.ndim || t.shape.some((s, k) => s !== ref.shape[k])) {
      throw rangeError(where, `tensors[${i}]`, `of the shape of tensors[0], ${shapeStr(ref.shape)}`, t);
    }
  });
  const d = normalizeDim(where, 'dim', dim, ref.ndim + 1);
  const shape = ref.shape.slice();
  shape.splice(d, 0, 1);
  return cat(where, all.map((t) => reshape(t, shape)), d);
}

/** An int32 index on t's device whose values (read on the host) are all in [0, size). */
function checkIndex(where: string, t: Tensor, index: unknown, what: string, size: number, dim: number): Int32Array {
  assertTensor(where, what, index);
  index._checkLive(where, what);
  if (index.dtype !== 'int32') throw typeError(where, what, "an int32 tensor of indices (tensor(indices, { dtype: 'int32' }))", index);
  requireSameDevice(where, index, what, t, 'the tensor');
  const values = index._int32Values(where);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v < 0 || v >= size) {
      throw rangeError(where, `${what}${index.ndim > 0 ? `[${multiIndex(index.shape, i)}]` : ''}`, `in [0, ${size}) (the size of dim ${dim})`, v);
    }
  }
  return values;
}

function multiIndex(shape: readonly number[], i: number): string {
  const idx: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(i % shape[d]);
    i = Math.floor(i / shape[d]);
  }
  return idx.join(', ');
}

/** Tensor.indexSelect: the entries index (int32, 1-D or 0-d) names along dim, in its order. */
export function indexSelect(t: Tensor, dim: unknown, index: unknown): Tensor {
  const where = 'Tensor.indexSelect';
  t._checkLive(where);
  const d = dimOf(where, t, dim);
  assertTensor(where, 'index', index);
  if (index.ndim > 1) throw rangeError(where, 'index', 'a 1-D (or 0-d) int32 tensor', index);
  const values = checkIndex(where, t, index, 'index', t.shape[d], d);
  return ops.gather(t, index.ndim === 0 ? reshape(index, [1]) : index, d, true, values);
}

/**
 * Tensor.gather: out[i][j][k] = this[index[i][j][k]][j][k] for dim 0 (and so on), as
 * torch.gather: index int32 with the tensor's dims, no larger than it in the other dims.
 */
export function gather(t: Tensor, dim: unknown, index: unknown): Tensor {
  const where = 'Tensor.gather';
  t._checkLive(where);
  assertTensor(where, 'index', index);
  if (t.ndim === 0 && index.ndim === 0) {
    const values = checkIndex(where, t, index, 'index', 1, 0);
    normalizeDim(where, 'dim', dim, 0);
    return reshape(ops.gather(reshape(t, [1]), reshape(index, [1]), 0, false, values), []);
  }
  const d = dimOf(where, t, dim);
  if (index.ndim !== t.ndim) throw rangeError(where, 'index', `a ${t.ndim}-D int32 tensor (the tensor's dims)`, index);
  index.shape.forEach((s, k) => {
    if (k !== d && s > t.shape[k]) {
      throw rangeError(where, `index.shape[${k}]`, `at most ${t.shape[k]} (the tensor's size in dim ${k}; shapes ${shapeStr(index.shape)} and ${shapeStr(t.shape)})`, s);
    }
  });
  const values = checkIndex(where, t, index, 'index', t.shape[d], d);
  return ops.gather(t, index, d, false, values);
}

/** tril / triu: the lower (upper) triangle of each matrix of the last two dims, from diagonal k. */
export function triangle(where: string, t: Tensor, k: unknown, upper: boolean): Tensor {
  t._checkLive(where);
  if (t.ndim < 2) throw rangeError(where, 'the tensor', 'at least 2-D (matrices in the last two dims)', t);
  const diag = checkInteger(where, 'diagonal', k);
  return ops.triangle(t, diag, upper);
}
