// Losses with a fused native forward and backward.
import type { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { defineFunction } from '../autograd';
import { viewOf } from './memory';
import { isHalf } from '../dtype';

type Reduction = 'mean' | 'sum' | 'none';

type CrossEntropyArgs = [logits: Tensor, targets: Tensor, ignoreIndex: number, labelSmoothing: number,
  reduction: Reduction, count: number];
interface CrossEntropyState {
  rows2: [number, number];
  logits2: NativeTensor;
  lse: NativeTensor;
  targets: Tensor;
  ignoreIndex: number;
  labelSmoothing: number;
  scale: number;
}

/**
 * Cross-entropy of logits [N, C] or [C] with a fused log-softmax; targets: int32 [N] class
 * indices (checked by the caller; the op owns them), `count` of them not ignoreIndex ('mean'
 * divides by it).
 */
export const crossEntropy = defineFunction<CrossEntropyArgs, CrossEntropyState>({
  name: 'CrossEntropyBackward',
  forward(ctx, logits, targets, ignoreIndex, labelSmoothing, reduction, count) {
    ctx.own(targets);
    const C = logits.shape[logits.ndim - 1];
    const N = logits.ndim === 2 ? logits.shape[0] : 1;
    const logits2 = native.view(logits._h, [N, C]);
    const [rows, lse] = native.crossEntropyForward(logits2, targets._h, ignoreIndex, labelSmoothing);
    ctx.own(lse);
    // The loss of half logits is float32 (computed in float, as the loss of a half model is).
    const lossDtype = isHalf(logits.dtype) ? 'float32' : logits.dtype;
    let out: Tensor;
    let scale = 1;
    if (reduction === 'none') {
      out = logits._make(logits.ndim === 2 ? rows : native.view(rows, []), logits.ndim === 2 ? [N] : [], lossDtype);
    } else {
      const s = native.sumTo(rows, []);
      native.dispose(rows);
      if (reduction === 'mean') {
        scale = 1 / count;
        out = logits._make(native.affine(s, scale, 0), [], lossDtype);
        native.dispose(s);
      } else {
        out = logits._make(s, [], lossDtype);
      }
    }
    ctx.rows2 = [N, C];
    ctx.logits2 = logits2;
    ctx.lse = lse;
    ctx.targets = targets;
    ctx.ignoreIndex = ignoreIndex;
    ctx.labelSmoothing = labelSmoothing;
    ctx.scale = scale;
    ctx.saveForBackward(logits);
    return out;
  },
  backward(ctx, g) {
    const [logits] = ctx.savedTensors as Tensor[];
    const d = native.crossEntropyBackward(ctx.logits2, ctx.lse, ctx.targets._h, ctx.ignoreIndex, ctx.labelSmoothing, g._h, ctx.scale);
    return [viewOf(logits._make(d, ctx.rows2), logits.shape), null, null, null, null, null];
  },
});

type LinearCrossEntropyArgs = [x: Tensor, weight: Tensor, targets: Tensor, ignoreIndex: number, count: number];
interface LinearCrossEntropyState {
  logits: NativeTensor;
  lse: NativeTensor;
  targets: Tensor;
  ignoreIndex: number;
  scale: number;
}

/**
 * The mean cross entropy of a bias-free head's logits, crossEntropy(linear(x, weight), targets)
 * as one node: x [N, H], weight [V, H], int32 targets [N] (checked by the caller; the op owns
 * them), `count` of them not ignoreIndex. The same loss and gradients; backward forms x's
 * gradient from the logits without their [N, V] gradient in memory (on the CPU the product
 * makes it while packing its operand). A weight that wants its gradient takes the plain path.
 */
export const linearCrossEntropy = defineFunction<LinearCrossEntropyArgs, LinearCrossEntropyState>({
  name: 'LinearCrossEntropyBackward',
  forward(ctx, x, weight, targets, ignoreIndex, count) {
    ctx.own(targets);
    const [logits, rows, lse] = native.linearCrossEntropyForward(x._h, weight._h, targets._h, ignoreIndex, 0);
    ctx.own(logits, lse);
    const s = native.sumTo(rows, []);
    native.dispose(rows);
    ctx.scale = 1 / count;
    const out = x._make(native.affine(s, ctx.scale, 0), [], isHalf(x.dtype) ? 'float32' : x.dtype);
    native.dispose(s);
    ctx.logits = logits;
    ctx.lse = lse;
    ctx.targets = targets;
    ctx.ignoreIndex = ignoreIndex;
    ctx.saveForBackward(ctx.needsInputGrad[1] ? x : null, weight);
    return out;
  },
  backward(ctx, g) {
    const [x, weight] = ctx.savedTensors as [Tensor | null, Tensor];
    const [needX, needW] = ctx.needsInputGrad;
    if (!needW) {
      const dx = needX
        ? native.linearCrossEntropyBackward(ctx.logits, ctx.lse, ctx.targets._h, ctx.ignoreIndex, 0, g._h, ctx.scale, weight._h)
        : null;
      return [dx ? g._make(dx, [ctx.targets.shape[0], weight.shape[1]], weight.dtype) : null, null, null, null, null];
    }
    const d = native.crossEntropyBackward(ctx.logits, ctx.lse, ctx.targets._h, ctx.ignoreIndex, 0, g._h, ctx.scale);
    try {
      const [dx, dW] = native.linearBackward(d, x!._h, weight._h, null, [needX, true, false]);
      return [dx ? g._make(dx, x!.shape, x!.dtype) : null, g._make(dW!, weight.shape, weight.dtype), null, null, null];
    } finally {
      native.dispose(d);
    }
  },
});
