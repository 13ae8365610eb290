// Shape ops: views of the same storage (reshape, detach) and copies (permute, clone).
import type { Tensor } from '../tensor';
import { native } from '../native';
import { defineFunction } from '../autograd';
import { to } from './creation';

/** The same data with another shape (same numel; checked by the caller), sharing the storage. */
export const reshape = defineFunction<[x: Tensor, shape: readonly number[]], { inShape: readonly number[] }>({
  name: 'ReshapeBackward',
  forward(ctx, x, shape) {
    ctx.inShape = x.shape;
    return x._share(native.view(x._h, shape as number[]), shape);
  },
  backward(ctx, g): (Tensor | null)[] {
    return [reshape(g, ctx.inShape), null];
  },
});

/** A view of x's storage outside the graph. */
export function detach(x: Tensor): Tensor {
  return x._share(native.view(x._h, x.shape as number[]), x.shape);
}

/** Dims reordered by a permutation (checked by the caller); copies the data. */
export const permute = defineFunction<[x: Tensor, perm: readonly number[]], { inverse: number[] }>({
  name: 'PermuteBackward',
  forward(ctx, x, perm) {
    ctx.inverse = perm.map((_, i) => perm.indexOf(i));
    return x._make(native.permute(x._h, perm as number[]), perm.map((d) => x.shape[d]));
  },
  backward(ctx, g): (Tensor | null)[] {
    return [permute(g, ctx.inverse), null];
  },
});

const CloneFloat = defineFunction<[x: Tensor]>({
  name: 'CloneBackward',
  forward(_ctx, x) {
    return x._make(native.affine(x._h, 1, 0), x.shape);
  },
  backward(_ctx, g) {
    return [g];
  },
});

/**
 * A copy with its own storage: differentiable for float tensors; int32 tensors (which cannot
 * require grad) get a plain copy, as torch.clone copies any dtype.
 */
export function clone(x: Tensor): Tensor {
  return x.dtype === 'int32' ? to(x, x._device, 'int32') : CloneFloat(x);
}
