// Checks of tensor arguments, shared by the public functions: each throws the
// error lib/errors.ts formats ("<where>: <what> must be …, got …") before any
// native call.
import { Tensor } from './tensor';
import { checkInt, rangeError, typeError } from './errors';
import { numelOf } from './shape';
import { isHalf } from './dtype';

export function assertTensor(where: string, what: string, v: unknown): asserts v is Tensor {
  if (!(v instanceof Tensor)) throw typeError(where, what, 'a Tensor', v);
}

/** Throws unless t is a live float tensor (float32, float64, bfloat16 or float16). */
export function requireFloat(where: string, t: Tensor, what = 'the tensor'): void {
  t._checkLive(where);
  if (t.dtype === 'int32') throw rangeError(where, `${what}'s dtype`, FLOAT_DTYPE_NAMES, t.dtype);
}

/** How errors name the float dtypes. */
export const FLOAT_DTYPE_NAMES = 'float32, float64, bfloat16 or float16';

/**
 * An adapter matrix (A, B, a magnitude) of a layer whose weight is `ref`: on its device, in its
 * dtype or, for a bfloat16/float16 layer, in float32 (PEFT's autocast_adapter_dtype), as the
 * native LoRA ops take them. Any other mix is refused naming both tensors.
 */
export function requireAdapterDtype(where: string, ref: Tensor, refName: string, t: Tensor, what: string): void {
  requireSameDevice(where, ref, refName, t, what);
  if (t.dtype === ref.dtype || (isHalf(ref.dtype) && t.dtype === 'float32')) return;
  const allowed = isHalf(ref.dtype) ? `${ref.dtype} or float32` : ref.dtype;
  throw new TypeError(`${where}: ${what} is ${t.dtype} but ${refName} is ${ref.dtype}; the adapters of a ${ref.dtype} layer must be ${allowed}`);
}

/** Inputs of one op (an index or mask too) must be on one device. */
export function requireSameDevice(where: string, a: Tensor, an: string, b: Tensor, bn: string): void {
  if (a.device !== b.device) {
    throw new RangeError(`${where}: ${an} is on ${a.device} but ${bn} is on ${b.device}; move one with .to()`);
  }
}

/** Inputs of one op must share device and dtype. */
export function requireSame(where: string, a: Tensor, an: string, b: Tensor, bn: string): void {
  requireSameDevice(where, a, an, b, bn);
  if (a.dtype !== b.dtype) {
    throw new TypeError(`${where}: ${an} is ${a.dtype} but ${bn} is ${b.dtype}; convert one with .to('${a.dtype}')`);
  }
}

/** A value an int32 tensor can hold (fractions truncate, as in torch; NaN and out-of-range values cannot). */
export function checkInt32Value(where: string, what: string, v: number): void {
  if (!(v > -2147483649 && v < 2147483648)) {
    throw rangeError(where, what, 'a number an int32 tensor can hold (integers in [-2147483648, 2147483647])', v);
  }
}

/** A number, NaN and the infinities included. */
export function checkNumberOrNaN(where: string, what: string, v: unknown): void {
  if (typeof v !== 'number') throw typeError(where, what, 'a number', v);
}

export function normalizeDim(where: string, what: string, d: unknown, ndim: number): number {
  if (typeof d !== 'number' || !Number.isInteger(d)) throw typeError(where, what, 'an integer', d);
  const n = Math.max(ndim, 1);
  if (d < -n || d >= n) throw rangeError(where, what, `in [${-n}, ${n - 1}]`, d);
  return d < 0 ? d + n : d;
}

/** dim: undefined or null (every dim), one dim or a list of distinct dims. */
export function normalizeDims(where: string, dim: unknown, ndim: number): number[] {
  if (dim === undefined || dim === null) return Array.from({ length: ndim }, (_, i) => i);
  const list = typeof dim === 'number' ? [dim] : Array.isArray(dim) ? dim : null;
  if (!list) throw typeError(where, 'dim', 'an integer or an array of integers', dim);
  const out = list.map((d, i) => normalizeDim(where, Array.isArray(dim) ? `dim[${i}]` : 'dim', d, ndim));
  if (new Set(out).size !== out.length) throw rangeError(where, 'dim', 'distinct dims', dim);
  return ndim === 0 ? [] : out;
}

/** Validates a shape argument (non-negative integers). */
export function checkShape(where: string, what: string, shape: unknown): number[] {
  if (!Array.isArray(shape)) throw typeError(where, what, 'an array of non-negative integers', shape);
  shape.forEach((d, i) => checkInt(where, `${what}[${i}]`, d));
  const numel = numelOf(shape);
  if (numel > Number.MAX_SAFE_INTEGER) throw rangeError(where, what, 'a shape with at most 2^53 - 1 elements', shape);
  return shape.slice();
}

/** The shape a reshape to `want` (one dim may be -1) gives a tensor of `numel` elements. */
export function inferShape(where: string, want: readonly number[], numel: number, from: readonly number[]): number[] {
  if (!Array.isArray(want)) throw typeError(where, 'shape', 'an array of integers', want);
  let infer = -1;
  let known = 1;
  want.forEach((d, i) => {
    if (d === -1) {
      if (infer >= 0) throw rangeError(where, 'shape', 'at most one -1', want);
      infer = i;
    } else {
      checkInt(where, `shape[${i}]`, d);
      known *= d;
    }
  });
  const out = want.slice();
  if (infer >= 0) {
    if (known === 0 || numel % known !== 0) {
      throw rangeError(where, 'shape', `compatible with ${numel} elements (from shape [${from.join(', ')}])`, want);
    }
    out[infer] = numel / known;
  } else if (known !== numel) {
    throw rangeError(where, 'shape', `one with ${numel} elements (from shape [${from.join(', ')}])`, want);
  }
  return out;
}

/** The shape of a broadcast of a and b. */
export function broadcastShapes(where: string, a: Tensor, b: Tensor): number[] {
  const r = Math.max(a.ndim, b.ndim);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = i < r - a.ndim ? 1 : a.shape[i - (r - a.ndim)];
    const db = i < r - b.ndim ? 1 : b.shape[i - (r - b.ndim)];
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${where}: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be broadcast together (dim ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** How a matmul runs as one batched product of 3-D views (torch.matmul's rules). */
export interface MatmulPlan {
  /** a and b with 1-D operands promoted to 2-D. */
  a2: number[];
  b2: number[];
  /** The 3-D views the product runs on: [batch or 1, m, k] and [batch or 1, k, n]. */
  A3: number[];
  B3: number[];
  /** The broadcast batch dims, and an operand's full shape when it must be expanded to them. */
  batch: number[];
  expandA: number[] | null;
  expandB: number[] | null;
  /** b has no batch dims: one GEMM over all rows of a. */
  sharedB: boolean;
  m: number;
  k: number;
  n: number;
  /** The output's shape (dims added for 1-D operands dropped). */
  outShape: number[];
}

/** Checks that a and b can be multiplied (both at least 1-D) and plans the product. */
export function matmulPlan(where: string, a: Tensor, b: Tensor): MatmulPlan {
  if (a.ndim === 0 || b.ndim === 0) throw rangeError(where, 'both operands', 'at least 1-D', a.ndim === 0 ? a : b);
  // Promote 1-D operands as torch does, and drop the added dim at the end.
  const a2 = a.ndim === 1 ? [1, a.shape[0]] : a.shape.slice();
  const b2 = b.ndim === 1 ? [b.shape[0], 1] : b.shape.slice();
  const [m, k] = a2.slice(-2);
  const [kb, n] = b2.slice(-2);
  if (k !== kb) {
    throw new RangeError(`${where}: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be multiplied (${k} != ${kb})`);
  }
  const batchA = a2.slice(0, -2);
  const batchB = b2.slice(0, -2);
  let A3: number[];
  let B3: number[];
  let batch: number[];
  let expandA: number[] | null = null;
  let expandB: number[] | null = null;
  if (batchB.length === 0) {
    // [..., m, k] @ [k, n]: one GEMM over all rows.
    batch = batchA;
    A3 = [1, numelOf(batchA) * m, k];
    B3 = [1, k, n];
  } else {
    const r = Math.max(batchA.length, batchB.length);
    batch = [];
    for (let i = 0; i < r; i++) {
      const da = i < r - batchA.length ? 1 : batchA[i - (r - batchA.length)];
      const db = i < r - batchB.length ? 1 : batchB[i - (r - batchB.length)];
      if (da !== db && da !== 1 && db !== 1) {
        throw new RangeError(`${where}: batch dims of [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be broadcast`);
      }
      batch.push(da === 1 ? db : da);
    }
    const nb = numelOf(batch);
    if (numelOf(batchA) !== nb && numelOf(batchA) !== 1) expandA = [...batch, m, k];
    if (numelOf(batchB) !== nb && numelOf(batchB) !== 1) expandB = [...batch, k, n];
    A3 = [numelOf(batchA) === 1 ? 1 : nb, m, k];
    B3 = [numelOf(batchB) === 1 ? 1 : nb, k, n];
  }
  const outShape = [...batch, m, n];
  if (a.ndim === 1) outShape.splice(outShape.length - 2, 1);
  if (b.ndim === 1) outShape.splice(outShape.length - 1, 1);
  return { a2, b2, A3, B3, batch, expandA, expandB, sharedB: batchB.length === 0, m, k, n, outShape };
}

/** Validates x [..., inFeatures], the input of a layer with a weight [out, in]. */
export function checkLinearInput(where: string, x: unknown, inFeatures: number, what = 'inFeatures'): asserts x is Tensor {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  if (x.ndim < 1) throw rangeError(where, 'x', 'a tensor with at least 1 dim [..., in]', x);
  const last = x.shape[x.ndim - 1];
  if (last !== inFeatures) throw rangeError(where, 'x.shape[-1]', `${inFeatures} (${what})`, last);
}

/**
 * Validates the weight [out, in] and bias [out] (or null) of a linear map of x (x [..., in] is
 * checked here against weight.shape[1]): live float tensors on x's device in x's dtype. Returns the
 * bias, or null. `names` are how the caller's user knows them (a layer's 'origLinear.weight').
 */
export function checkLinearWeights(where: string, x: unknown, weight: unknown, bias: unknown,
  names: { weight: string; bias: string } = { weight: 'weight', bias: 'bias' }): Tensor | null {
  assertTensor(where, names.weight, weight);
  requireFloat(where, weight, names.weight);
  if (weight.ndim !== 2) throw rangeError(where, names.weight, 'a 2-D tensor [out, in]', weight);
  const [outF, inF] = weight.shape;
  checkLinearInput(where, x, inF, `${names.weight}.shape[1]`);
  requireSame(where, x, 'x', weight, names.weight);
  if (bias === null || bias === undefined) return null;
  assertTensor(where, names.bias, bias);
  requireSame(where, x, 'x', bias, names.bias);
  if (bias.ndim !== 1 || bias.shape[0] !== outF) throw rangeError(where, names.bias, `a 1-D tensor of ${outF} elements`, bias);
  bias._checkLive(where);
  return bias;
}
