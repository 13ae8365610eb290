// Views and joins: slices (narrow, slice, select, split, chunk), expand, cat, gather along a dim
// (gather, indexSelect) and tril/triu. Tensors are contiguous, so each of these copies through a
// native strided copy (stridedRead / stridedWrite) rather than sharing storage as torch's views
// do; arguments are checked by the caller (lib/views.ts).
import type { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { defineFunction } from '../autograd';
import { DEVICE_TYPE, dtypeCode } from './enums';
import { sumToShape } from './memory';
import { fromArray, to } from './creation';
import { sortedPositions } from './transformer';
import { numelOf } from '../shape';

/** Zeros shaped `shape` on t's device in t's dtype (a native handle). */
function zerosLike(t: Tensor, shape: readonly number[]): NativeTensor {
  return native.full(shape.slice(), dtypeCode(t.dtype), DEVICE_TYPE[t._device.type], t._device.index, 0);
}

/** Row-major element strides of a contiguous tensor of `shape`. */
export function stridesOf(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length).fill(1);
  for (let d = shape.length - 2; d >= 0; d--) st[d] = st[d + 1] * shape[d + 1];
  return st;
}

/** A region of a contiguous tensor: element i = x[offset + sum_d i_d strides[d]]. */
export interface Region {
  sizes: number[];
  strides: number[];
  offset: number;
}

/**
 * The region of x as a new tensor (checked by the caller). Backward writes the gradient into
 * zeros at the region (the regions these ops make never repeat an element).
 */
export const region = defineFunction<[x: Tensor, r: Region], { inShape: readonly number[]; r: Region }>({
  name: 'SliceBackward',
  forward(ctx, x, r) {
    ctx.inShape = x.shape;
    ctx.r = r;
    return x._make(native.stridedRead(x._h, r.sizes, r.strides, r.offset), r.sizes);
  },
  backward(ctx, g): (Tensor | null)[] {
    const dx = zerosLike(g, ctx.inShape);
    native.stridedWrite(dx, ctx.r.sizes, ctx.r.strides, ctx.r.offset, g._h);
    return [g._make(dx, ctx.inShape), null];
  },
});

/** x broadcast to `shape` (checked by the caller); the gradient sums over the broadcast dims. */
export const expand = defineFunction<[x: Tensor, shape: readonly number[]], { inShape: readonly number[] }>({
  name: 'ExpandBackward',
  forward(ctx, x, shape) {
    ctx.inShape = x.shape;
    return x._make(native.expand(x._h, shape.slice()), shape);
  },
  backward(ctx, g): (Tensor | null)[] {
    return [sumToShape(g, ctx.inShape), null];
  },
});

/** The shape and the offset along dim of each piece of a cat (pieces of [0] skipped, as torch). */
interface CatPlan {
  shape: number[];
  dim: number;
  starts: number[];
}

/** Where piece k of a cat lies in the output. */
function pieceRegion(plan: CatPlan, piece: readonly number[], start: number): Region {
  const st = stridesOf(plan.shape);
  return { sizes: piece.slice(), strides: st, offset: start * st[plan.dim] };
}

/** The pieces joined along plan.dim into a tensor of plan.shape (checked by the caller). */
export const cat = defineFunction<[plan: CatPlan, ...xs: Tensor[]], { plan: CatPlan; shapes: (readonly number[])[] }>({
  name: 'CatBackward',
  forward(ctx, plan, ...xs) {
    ctx.plan = plan;
    ctx.shapes = xs.map((x) => x.shape);
    const out = zerosLike(xs[0], plan.shape);
    xs.forEach((x, k) => {
      if (x.numel === 0) return;
      const r = pieceRegion(plan, x.shape, plan.starts[k]);
      native.stridedWrite(out, r.sizes, r.strides, r.offset, x._h);
    });
    return xs[0]._make(out, plan.shape);
  },
  backward(ctx, g): (Tensor | null)[] {
    const grads = ctx.shapes.map((shape, k): Tensor | null => {
      if (!ctx.needsInputGrad[k + 1]) return null;
      if (numelOf(shape) === 0) return g._make(zerosLike(g, shape), shape);
      const r = pieceRegion(ctx.plan, shape, ctx.plan.starts[k]);
      return g._make(native.stridedRead(g._h, r.sizes, r.strides, r.offset), shape);
    });
    return [null, ...grads];
  },
});

/**
 * Along dim: select (indexSelect, index 1-D) or gather (index of x's rank), index int32 with its
 * values checked by the caller. Backward scatter-adds in a fixed order (the same bits on every
 * device) through its own copy of the index, so the caller may dispose or change the index.
 */
export const gather = defineFunction<[x: Tensor, index: Tensor, dim: number, select: boolean, hostIndex: Int32Array],
  { saved: Tensor; order: Tensor | null; dim: number; select: boolean; inShape: readonly number[] }>({
  name: 'GatherBackward',
  forward(ctx, x, index, dim, select, hostIndex) {
    const shape = x.shape.slice();
    if (select) shape[dim] = index.shape[0];
    const out = x._make(native.gather(x._h, index._h, dim, select), select ? shape : index.shape);
    if (ctx.needsInputGrad[0]) {
      ctx.saved = to(index, index._device, 'int32');
      ctx.own(ctx.saved);
      // A GPU sums each index value's run of positions for indexSelect from their sort order.
      const gpu = x._device.type !== 'cpu';
      ctx.order = gpu && select ? fromArray(sortedPositions(hostIndex, x.shape[dim]), [hostIndex.length], 'int32', x._device) : null;
      if (ctx.order) ctx.own(ctx.order);
      ctx.dim = dim;
      ctx.select = select;
      ctx.inShape = x.shape;
    }
    return out;
  },
  backward(ctx, g): (Tensor | null)[] {
    const { saved, order } = ctx;
    const dx = native.gatherBackward(saved._h, order ? order._h : null, ctx.dim, ctx.select, g._h, ctx.inShape.slice());
    return [g._make(dx, ctx.inShape), null, null, null, null];
  },
});

/** tril (upper false) or triu with diagonal k; the gradient is masked the same way. */
export const triangle = defineFunction<[x: Tensor, k: number, upper: boolean], { k: number; upper: boolean }>({
  name: 'TriangleBackward',
  forward(ctx, x, k, upper) {
    ctx.k = k;
    ctx.upper = upper;
    return x._make(native.triangle(x._h, k, upper), x.shape);
  },
  backward(ctx, g): (Tensor | null)[] {
    return [triangle(g, ctx.k, ctx.upper), null, null];
  },
});

/**
 * src written into dst at `start` along `dim`, in place and outside the graph (a preallocated
 * key/value cache filled step by step); shapes are checked by the caller: src has dst's shape
 * except along dim, where start + src.shape[dim] <= dst.shape[dim].
 */
export function writeAlong_(dst: Tensor, src: Tensor, dim: number, start: number): void {
  if (src.numel === 0) return;
  const st = stridesOf(dst.shape);
  native.stridedWrite(dst._h, src.shape.slice(), st, start * st[dim], src._h);
}
