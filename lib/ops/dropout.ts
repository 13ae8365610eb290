// Dropout: x * keep / (1 - p), the mask drawn by element index from a generator key, so
// backward applies the same call to the gradient instead of storing the mask.
import type { Tensor } from '../tensor';
import { native } from '../native';
import { defineFunction } from '../autograd';

export const dropout = defineFunction<[x: Tensor, p: number, key: { seed: bigint; offset: bigint }], { p: number; key: { seed: bigint; offset: bigint } }>({
  name: 'DropoutBackward',
  forward(ctx, x, p, key) {
    ctx.p = p;
    ctx.key = key;
    return x._make(native.dropout(x._h, p, key.seed, key.offset), x.shape);
  },
  backward(ctx, g) {
    return [g._make(native.dropout(g._h, ctx.p, ctx.key.seed, ctx.key.offset), g.shape), null, null];
  },
});
