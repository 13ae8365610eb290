// Matrix products: matmul, linear layers, and LoRA (one fused native call each
// way; merging folds scale * B A into the weight in place).
import type { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { defineFunction } from '../autograd';
import type { MatmulPlan } from '../checks';
import { numelOf } from '../shape';
import { gradsLike, sumToShape, viewOf } from './memory';

/** a @ b as planned by matmulPlan (torch.matmul's rules: 1-D operands, broadcast batches). */
export const matmul = defineFunction<[a: Tensor, b: Tensor, plan: MatmulPlan], { plan: MatmulPlan; vA: NativeTensor; vB: NativeTensor }>({
  name: 'MatmulBackward',
  forward(ctx, a, b, plan) {
    const { a2, b2, A3, B3, expandA, expandB } = plan;
    const hA = expandA ? native.expand(native.view(a._h, a2), expandA) : a._h;
    const hB = expandB ? native.expand(native.view(b._h, b2), expandB) : b._h;
    if (expandA) ctx.own(hA);
    if (expandB) ctx.own(hB);
    ctx.vA = native.view(hA, A3);
    ctx.vB = native.view(hB, B3);
    ctx.plan = plan;
    ctx.saveForBackward(a, b);
    const out3 = native.bmm(ctx.vA, ctx.vB, false, false);
    return a._make(native.view(out3, plan.outShape), plan.outShape);
  },
  backward(ctx, g) {
    const [a, b] = ctx.savedTensors as Tensor[];
    const { a2, b2, A3, batch, sharedB, m, k, n } = ctx.plan;
    const g3 = native.view(g._h, [sharedB ? 1 : numelOf(batch), A3[1], n]);
    // Gradients in the 3-D frame, then summed over broadcast batch dims and
    // reshaped back to the operands' own shapes.
    const back = (d: NativeTensor, full: number[], to: number[], orig: readonly number[]) => {
      const t = g._make(native.view(d, full), full);
      const r = sumToShape(t, to);
      if (r !== t) t.dispose();
      return viewOf(r, orig);
    };
    const [na, nb] = ctx.needsInputGrad;
    const ga = na ? back(native.bmm(g3, ctx.vB, false, true), sharedB ? a2 : [...batch, m, k], a2, a.shape) : null;
    const gb = nb ? back(native.bmm(ctx.vA, g3, true, false), sharedB ? [k, n] : [...batch, k, n], b2, b.shape) : null;
    return [ga, gb, null];
  },
});

/** dx of a layer computed on x viewed as [M, in]: back to x's own shape. */
function dxLike(x: Tensor, dx: NativeTensor | null): Tensor | null {
  return dx ? x._make(native.view(dx, x.shape as number[]), x.shape) : null;
}

/**
 * y = x W^T + b for x [..., in], W [out, in], b [out] or null (checked by the caller). x is kept
 * only when W needs a gradient (dW = g^T x): a frozen layer's input is not kept for backward,
 * as torch's linear saves it only then.
 */
export const linear = defineFunction<[x: Tensor, W: Tensor, b: Tensor | null], { x2: NativeTensor | null; M: number; xShape: readonly number[] }>({
  name: 'LinearBackward',
  forward(ctx, x, W, b) {
    const [outF, inF] = W.shape;
    ctx.M = numelOf(x.shape.slice(0, -1)); // not numel / inF: inF may be 0
    ctx.xShape = x.shape;
    const x2 = native.view(x._h, [ctx.M, inF]);
    const y = native.linear(x2, W._h, b ? b._h : null);
    const keepX = ctx.needsInputGrad[1];
    ctx.x2 = keepX ? x2 : null;
    ctx.saveForBackward(keepX ? x : null, W, b);
    const outShape = [...x.shape.slice(0, -1), outF];
    return x._make(native.view(y, outShape), outShape);
  },
  backward(ctx, g) {
    const [, W, b] = ctx.savedTensors as [Tensor | null, Tensor, Tensor | null];
    const [outF, inF] = W.shape;
    const g2 = native.view(g._h, [ctx.M, outF]);
    const needs = ctx.needsInputGrad;
    const dxOf = (dx: NativeTensor | null) => (dx ? g._make(native.view(dx, ctx.xShape as number[]), ctx.xShape) : null);
    if (ctx.x2) {
      const [dx, dW, db] = native.linearBackward(g2, ctx.x2, W._h, b ? b._h : null, needs.slice());
      return [dxOf(dx), ...gradsLike([dW, db], [W, b])];
    }
    // W frozen: dx = g W, db = the column sums of g; x is not needed (nor kept).
    let dx: NativeTensor | null = null;
    if (needs[0]) {
      const d3 = native.bmm(native.view(g2, [1, ctx.M, outF]), native.view(W._h, [1, outF, inF]), false, false);
      dx = native.view(d3, [ctx.M, inF]);
    }
    const db = needs[2] && b ? g._make(native.sumTo(g2, [outF]), [outF]) : null;
    return [dxOf(dx), null, db];
  },
});

type LoraArgs = [x: Tensor, W: Tensor, A: Tensor, B: Tensor, b: Tensor | null, scale: number, p: number,
  key: { seed: bigint; offset: bigint }];
interface LoraState {
  x2: NativeTensor;
  M: number;
  h: NativeTensor;
  b: Tensor | null;
  scale: number;
  p: number;
  key: { seed: bigint; offset: bigint };
}

/**
 * y = x W^T + b + scale * (drop_p(x) A^T) B^T for x [..., in] (checked by the caller). The dropout
 * mask comes from the generator key, so backward draws the same one; forward keeps h = drop(x) A^T.
 */
export const loraLinear = defineFunction<LoraArgs, LoraState>({
  name: 'LoRALinearBackward',
  forward(ctx, x, W, A, B, b, scale, p, key) {
    const [outF, inF] = W.shape;
    ctx.M = numelOf(x.shape.slice(0, -1)); // not numel / inF: inF may be 0
    ctx.x2 = native.view(x._h, [ctx.M, inF]);
    const [y, h] = native.loraForward(ctx.x2, W._h, b ? b._h : null, A._h, B._h, scale, p, key.seed, key.offset);
    ctx.own(h);
    ctx.h = h;
    ctx.b = b;
    ctx.scale = scale;
    ctx.p = p;
    ctx.key = key;
    ctx.saveForBackward(x, W, A, B);
    const outShape = [...x.shape.slice(0, -1), outF];
    return x._make(native.view(y, outShape), outShape);
  },
  backward(ctx, g) {
    const [x, W, A, B] = ctx.savedTensors as Tensor[];
    const { b, key } = ctx;
    const g2 = native.view(g._h, [ctx.M, W.shape[0]]);
    const [dx, ...rest] = native.loraBackward(g2, ctx.x2, W._h, A._h, B._h, b ? b._h : null, ctx.h, ctx.scale, ctx.p,
      key.seed, key.offset, ctx.needsInputGrad.slice(0, 5));
    return [dxLike(x, dx), ...gradsLike(rest, [W, A, B, b]), null, null, null];
  },
});

/**
 * W += scale * B A in place, outside autograd. With safe, checks the result for NaN/Inf first and
 * returns false, W unchanged, when any would appear.
 */
export function loraMerge(W: Tensor, A: Tensor, B: Tensor, scale: number, safe: boolean): boolean {
  return native.loraMerge(W._h, A._h, B._h, scale, safe);
}
