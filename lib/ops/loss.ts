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
