// Optimiser steps: one native call updates every parameter of a group.
import type { Tensor } from '../tensor';
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
 * One Adam/AdamW update of params in place from grads, updating the moments (and with
 * maxExpAvgSq, AMSGrad's maxima); steps: each parameter's step count after this update.
 */
export function adamStep(params: Tensor[], grads: Tensor[], expAvg: Tensor[], expAvgSq: Tensor[],
  maxExpAvgSq: Tensor[] | null, steps: number[], cfg: AdamStepConfig): void {
  const h = (ts: Tensor[]) => ts.map((t) => t._h);
  native.adamStep(h(params), h(grads), h(expAvg), h(expAvgSq), maxExpAvgSq ? h(maxExpAvgSq) : null, steps,
    cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weightDecay, cfg.decoupled);
}
