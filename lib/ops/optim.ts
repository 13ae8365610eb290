// Optimiser steps: one native call updates every parameter of a group.
import type { Tensor } from '../tensor';
import type { DType } from '../dtype';
import { native } from '../native';

export interface AdamStepConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** AdamW: decay the weights directly instead of adding weightDecay * p to the gradient. */
  decoupled: boolean;
}

/**
 * torch.nn.utils.clip_grad_norm_ in one native call: the grads' total L2 norm (0-d, on their
 * device), and each grad scaled in place by min(1, maxNorm / (norm + 1e-6)); with skipNonfinite
 * a NaN or infinite norm leaves them unchanged. The grads may mix dtypes; the norm is in
 * normDtype, their promotion (the native side computes the same).
 */
export function clipGradNorm_(grads: Tensor[], maxNorm: number, skipNonfinite: boolean, normDtype: DType): Tensor {
  const norm = grads[0]._make(native.clipGradNorm_(grads.map((g) => g._h), maxNorm, skipNonfinite), [], normDtype);
  for (const g of grads) g._bumpVersion();
  return norm;
}

/**
 * One Adam/AdamW update of params in place from grads, updating the moments (and with
 * maxExpAvgSq, AMSGrad's maxima); steps: each parameter's step count after this update.
 */
export function adamStep(params: Tensor[], grads: Tensor[], expAvg: Tensor[], expAvgSq: Tensor[],
  maxExpAvgSq: Tensor[] | null, steps: number[], cfg: AdamStepConfig): void {
  const h = (ts: Tensor[]) => ts.map((t) => t._h);
  native.adamStep(h(params), h(grads), h(expAvg), h(expAvgSq), maxExpAvgSq ? h(maxExpAvgSq) : null, steps,
    cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weightDecay, cfg.decoupled);
}
