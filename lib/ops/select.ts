// Selections, scans, masks and the pointwise ops added beside them: max/min (values and indices),
// argmax/argmin, topk, cumsum, comparisons (int32 masks), where, clamp, pow and log-softmax.
// Arguments are checked by the callers (lib/tensor.ts, lib/nn/functional.ts).
import type { Tensor } from '../tensor';
import type { DType } from '../dtype';
import { native, NativeTensor } from '../native';
import { defineFunction } from '../autograd';
import { BINARY_OP, COMPARE_OP, CompareOp, DEVICE_TYPE, dtypeCode } from './enums';
import { sumToShape } from './memory';

/** A 0-d tensor of `value` on t's device in `dtype` (default t's). */
export function scalarLike(t: Tensor, value: number, dtype: DType = t.dtype): Tensor {
  return t._make(native.full([], dtypeCode(dtype), DEVICE_TYPE[t._device.type], t._device.index, value), [], dtype);
}

const keptShape = (shape: readonly number[], dim: number, size: number): number[] => shape.map((d, i) => (i === dim ? size : d));
const droppedShape = (shape: readonly number[], dim: number): number[] => shape.filter((_, i) => i !== dim);

export interface ValuesIndices {
  values: Tensor;
  /** int32 indices along the dim. */
  indices: Tensor;
}

// ------------------------------------------------------ max, min, topk along a dim

/** How one pick runs natively: [values, indices] with the dim kept (size 1 or k). */
type Pick = (x: Tensor) => [NativeTensor, NativeTensor];
/** Where forward leaves the indices for the caller. */
interface IndicesOut {
  indices?: Tensor;
}

/** The values of a pick along dim (max, min, topk); their gradient goes back to the picked indices. */
function pickFunction(name: string) {
  return defineFunction<[x: Tensor, dim: number, size: number, keepdim: boolean, pick: Pick, out: IndicesOut],
    { dim: number; inShape: readonly number[]; kept: number[] }>({
    name,
    forward(ctx, x, dim, size, keepdim, pick, out) {
      const [v, i] = pick(x);
      const kept = keptShape(x.shape, dim, size);
      const shape = keepdim ? kept : droppedShape(x.shape, dim);
      out.indices = x._make(keepdim ? i : native.view(i, shape), shape, 'int32');
      ctx.dim = dim;
      ctx.inShape = x.shape;
      ctx.kept = kept;
      ctx.saveForBackward(out.indices);
      return x._make(keepdim ? v : native.view(v, shape), shape);
    },
    backward(ctx, g) {
      const [indices] = ctx.savedTensors as Tensor[];
      const dx = native.indexDimBackward(native.view(g._h, ctx.kept), native.view(indices._h, ctx.kept), ctx.dim, ctx.inShape.slice());
      return [g._make(dx, ctx.inShape), null, null, null, null, null];
    },
  });
}

const PICK = { max: pickFunction('MaxBackward'), min: pickFunction('MinBackward'), topk: pickFunction('TopkBackward') };

/** Max or min along dim (normalised; x non-empty along it): values and the first index of the extreme. */
export function minmaxDim(op: 'max' | 'min', x: Tensor, dim: number, keepdim: boolean): ValuesIndices {
  const out: IndicesOut = {};
  const values = PICK[op](x, dim, 1, keepdim, (t) => native.minmax(t._h, dim, op === 'max'), out);
  return { values, indices: out.indices as Tensor };
}

/** The k largest (or smallest) along dim, sorted. */
export function topk(x: Tensor, k: number, dim: number, largest: boolean): ValuesIndices {
  const out: IndicesOut = {};
  const values = PICK.topk(x, dim, k, true, (t) => native.topk(t._h, k, dim, largest), out);
  return { values, indices: out.indices as Tensor };
}

/**
 * Max or min over all elements (x non-empty), 0-d. As torch, the gradient is shared evenly by
 * the elements equal to the result.
 */
function minmaxAllFunction(op: 'max' | 'min') {
  return defineFunction<[x: Tensor]>({
    name: op === 'max' ? 'MaxBackward' : 'MinBackward',
    forward(ctx, x) {
      const [v, i] = native.minmax(native.view(x._h, [x.numel]), 0, op === 'max');
      native.dispose(i);
      const out = x._make(native.view(v, []), []);
      ctx.saveForBackward(x, out);
      return out;
    },
    backward(ctx, g) {
      const [x, out] = ctx.savedTensors as Tensor[];
      // The elements equal to the result; for a NaN result, the NaN elements (as torch).
      const equal = native.compare(COMPARE_OP.eq, x._h, out._h);
      const nanX = native.compare(COMPARE_OP.ne, x._h, x._h);
      const nanOut = native.compare(COMPARE_OP.ne, out._h, out._h);
      const mask = native.where(nanOut, nanX, equal);
      const one = scalarLike(x, 1);
      const zero = scalarLike(x, 0);
      const maskF = native.where(mask, one._h, zero._h);
      const count = native.sumTo(maskF, []);
      const share = native.binary(BINARY_OP.div, g._h, count);
      const dx = native.binary(BINARY_OP.mul, maskF, share);
      for (const h of [equal, nanX, nanOut, mask, maskF, count, share]) native.dispose(h);
      one.dispose();
      zero.dispose();
      return [g._make(dx, x.shape)];
    },
  });
}
const ALL = { max: minmaxAllFunction('max'), min: minmaxAllFunction('min') };

export function minmaxAll(op: 'max' | 'min', x: Tensor): Tensor {
  return ALL[op](x);
}

/** The index of the max (or min) along dim, or of the flattened tensor with dim null (0-d). */
export function argMinMax(op: 'max' | 'min', x: Tensor, dim: number | null, keepdim: boolean): Tensor {
  if (dim === null) {
    const [v, i] = native.minmax(native.view(x._h, [x.numel]), 0, op === 'max');
    native.dispose(v);
    const shape = keepdim ? x.shape.map(() => 1) : [];
    return x._make(native.view(i, shape), shape, 'int32');
  }
  const [v, i] = native.minmax(x._h, dim, op === 'max');
  native.dispose(v);
  const shape = keepdim ? keptShape(x.shape, dim, 1) : droppedShape(x.shape, dim);
  return x._make(keepdim ? i : native.view(i, shape), shape, 'int32');
}

// ------------------------------------------------------------------- cumsum

export const cumsum = defineFunction<[x: Tensor, dim: number], { dim: number }>({
  name: 'CumsumBackward',
  forward(ctx, x, dim) {
    ctx.dim = dim;
    return x._make(native.cumsum(x._h, dim, false), x.shape);
  },
  backward(ctx, g) {
    // d(prefix sums)/dx: the suffix sums of the gradient.
    return [g._make(native.cumsum(g._h, ctx.dim, true), g.shape), null];
  },
});

// ---------------------------------------------------------- masks and where

/** a op b as an int32 mask (1 true, 0 false), broadcasting; a and b of one dtype and device. */
export function compare(op: CompareOp, a: Tensor, b: Tensor, shape: readonly number[]): Tensor {
  return a._make(native.compare(COMPARE_OP[op], a._h, b._h), shape, 'int32');
}

/** cond ? a : b, broadcasting all three to `shape`; cond int32 (nonzero is true). */
export const where = defineFunction<[cond: Tensor, a: Tensor, b: Tensor, shape: readonly number[]]>({
  name: 'WhereBackward',
  forward(ctx, cond, a, b, shape) {
    ctx.saveForBackward(cond, a, b);
    return a._make(native.where(cond._h, a._h, b._h), shape);
  },
  backward(ctx, g) {
    const [cond, a, b] = ctx.savedTensors as Tensor[];
    const [, na, nb] = ctx.needsInputGrad;
    const zero = scalarLike(g, 0);
    const part = (take: boolean, to: readonly number[]): Tensor => {
      const p = g._make(take ? native.where(cond._h, g._h, zero._h) : native.where(cond._h, zero._h, g._h), g.shape);
      const r = sumToShape(p, to);
      if (r !== p) p.dispose();
      return r;
    };
    const grads = [null, na ? part(true, a.shape) : null, nb ? part(false, b.shape) : null, null];
    zero.dispose();
    return grads;
  },
});

// ------------------------------------------------------------- clamp, pow

export const clamp = defineFunction<[x: Tensor, min: number, max: number], { min: number; max: number }>({
  name: 'ClampBackward',
  forward(ctx, x, min, max) {
    ctx.min = min;
    ctx.max = max;
    ctx.saveForBackward(x);
    return x._make(native.clamp(x._h, min, max), x.shape);
  },
  backward(ctx, g) {
    const [x] = ctx.savedTensors as Tensor[];
    return [g._make(native.clampBackward(x._h, ctx.min, ctx.max, g._h), g.shape), null, null];
  },
});

/** a ^ b with broadcasting to `shape` (a number exponent comes as a 0-d tensor). */
export const pow = defineFunction<[a: Tensor, b: Tensor, shape: readonly number[]]>({
  name: 'PowBackward',
  forward(ctx, a, b, shape) {
    ctx.saveForBackward(a, b);
    return a._make(native.pow(a._h, b._h), shape);
  },
  backward(ctx, g) {
    const [a, b] = ctx.savedTensors as Tensor[];
    const [na, nb] = ctx.needsInputGrad;
    const [da, db] = native.powBackward(a._h, b._h, g._h, [na, nb]);
    return [da ? g._make(da, a.shape) : null, db ? g._make(db, b.shape) : null, null];
  },
});

// -------------------------------------------------------------- log-softmax

/** Log-softmax over the last dim. */
export const logSoftmax = defineFunction<[x: Tensor]>({
  name: 'LogSoftmaxBackward',
  forward(ctx, x) {
    const out = x._make(native.logSoftmax(x._h), x.shape);
    ctx.saveForBackward(out);
    return out;
  },
  backward(ctx, g) {
    const [out] = ctx.savedTensors as Tensor[];
    return [g._make(native.logSoftmaxBackward(out._h, g._h), g.shape)];
  },
});
