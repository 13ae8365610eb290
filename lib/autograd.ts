// Grad mode and the recorded graph's node type. The engine that walks the graph
// lives with Tensor (tensor.ts), which owns the gradient bookkeeping.
import type { Tensor } from './tensor';

let gradEnabled = true;

/** True unless inside noGrad(). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Runs fn with gradient recording off: ops inside record no graph and their
 * results do not require grad (like torch.no_grad). Synchronous functions only.
 */
export function noGrad<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new TypeError(`noGrad: fn must be a function, got ${typeof fn}`);
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** One recorded op: how to turn its output's gradient into its inputs' gradients. */
export interface GradFn {
  readonly name: string;
  inputs: Tensor[];
  /** Which inputs needed a gradient when the op ran (others get none and cost nothing). */
  needs: boolean[];
  /** Tensors the backward reads, with their version when saved (in-place changes are caught). */
  saved: [Tensor, number][];
  /** Returns one gradient per input (null where not needed); null once released. */
  backward: ((grad: Tensor) => (Tensor | null)[]) | null;
  /** Frees what forward kept only for backward. */
  release?: () => void;
}
