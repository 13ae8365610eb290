// torch.cat and torch.stack as functions of the package (checked and computed in lib/views.ts).
import type { Tensor } from './tensor';
import * as views from './views';

/**
 * The tensors joined along dim (default 0): one dtype and device, shapes equal except in dim;
 * 1-D empty tensors are skipped, as torch.cat does. The result is a new tensor.
 */
export function cat(tensors: readonly Tensor[], dim = 0): Tensor {
  return views.cat('cat', tensors, dim);
}

/** Tensors of one shape joined along a new dim (default 0), as torch.stack. */
export function stack(tensors: readonly Tensor[], dim = 0): Tensor {
  return views.stack('stack', tensors, dim);
}
