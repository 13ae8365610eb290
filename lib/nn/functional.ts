// Functional forms of the layers and losses (the `F` namespace).
import { Tensor } from '../tensor';
import { tensor } from '../creation';
import { assertTensor, checkLinearWeights, normalizeDim, requireFloat, requireSame } from '../checks';
import * as linearOps from '../ops/linear';
import * as lossOps from '../ops/loss';
import * as transformerOps from '../ops/transformer';
import { activation } from './activation';
import { logSoftmaxOp } from '../tensor';
import { checkInt, checkNumber, checkOneOf, checkOptions, checkKnownKeys, rangeError, typeError } from '../errors';

export type Reduction = 'mean' | 'sum' | 'none';
const REDUCTIONS: readonly Reduction[] = ['mean', 'sum', 'none'];

/** a and b: live float tensors of one dtype, device and shape (no broadcasting); `shapeOf` names a's shape in the error. */
function checkFloatPair(where: string, a: unknown, an: string, b: unknown, bn: string, shapeOf: string): void {
  assertTensor(where, an, a);
  assertTensor(where, bn, b);
  requireFloat(where, a, an);
  requireFloat(where, b, bn);
  requireSame(where, a, an, b, bn);
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw rangeError(where, `${bn}.shape`, `[${a.shape.join(', ')}] (${shapeOf})`, b.shape);
  }
}

/** y = x W^T + b for x [..., in], weight [out, in], bias [out]. */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  const b = checkLinearWeights('F.linear', x, weight, bias);
  return linearOps.linear(x, weight, b);
}

export function relu(x: Tensor): Tensor {
  return activation('F.relu', x, 'relu');
}

/** GELU; approximate 'none' uses erf (torch's default), 'tanh' the tanh formula. */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  const where = 'F.gelu';
  assertTensor(where, 'x', x);
  checkOneOf(where, 'approximate', approximate, ['none', 'tanh'] as const);
  return activation(where, x, approximate === 'tanh' ? 'geluTanh' : 'gelu');
}

export function silu(x: Tensor): Tensor {
  return activation('F.silu', x, 'silu');
}

/**
 * silu(gate) * up in one op: the gate of Llama-family MLPs (`act_fn(gate_proj(x)) * up_proj(x)`),
 * with the same values as `F.silu(gate).mul(up)` (each step rounded to the tensors' dtype) but
 * one pass over memory each way and silu(gate) never stored for backward. gate and up: float
 * tensors of one shape, dtype and device (no broadcasting).
 */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  checkFloatPair('F.swiglu', gate, 'gate', up, 'up', "gate's shape");
  return transformerOps.swiglu(gate, up);
}

export function sigmoid(x: Tensor): Tensor {
  return activation('F.sigmoid', x, 'sigmoid');
}

export function tanh(x: Tensor): Tensor {
  return activation('F.tanh', x, 'tanh');
}

/** Softmax along dim (default the last; torch's F.softmax wants it named), computed stably. */
export function softmax(x: Tensor, dim = -1): Tensor {
  const where = 'F.softmax';
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  if (x.ndim === 0) throw rangeError(where, 'x', 'at least 1-D', x);
  return x.softmax(normalizeDim(where, 'dim', dim, x.ndim));
}

/** Log-softmax along dim (default the last; torch's F.log_softmax wants it named), computed stably. */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  assertTensor('F.logSoftmax', 'x', x);
  return logSoftmaxOp('F.logSoftmax', x, dim);
}

function reduce(t: Tensor, reduction: Reduction): Tensor {
  if (reduction === 'none') return t;
  return reduction === 'sum' ? t.sum() : t.mean();
}

/** Mean squared error; input and target must have the same shape. */
export function mseLoss(input: Tensor, target: Tensor, options?: { reduction?: Reduction }): Tensor {
  const where = 'F.mseLoss';
  checkFloatPair(where, input, 'input', target, 'target', "the input's shape");
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['reduction']);
  const reduction = o.reduction === undefined ? 'mean' : checkOneOf(where, 'options.reduction', o.reduction, REDUCTIONS);
  const d = input.sub(target);
  return reduce(d.mul(d), reduction);
}

export interface CrossEntropyOptions {
  ignoreIndex?: number;
  reduction?: Reduction;
  labelSmoothing?: number;
}

/**
 * Cross-entropy between logits [N, C] (or [C]) and class indices [N] (or one
 * index), with a fused log-softmax. Targets equal to ignoreIndex (default -100)
 * count for nothing; 'mean' divides by the number of other targets.
 */
export function crossEntropy(input: Tensor, target: Tensor | ArrayLike<number> | number, options?: CrossEntropyOptions): Tensor {
  const where = 'F.crossEntropy';
  assertTensor(where, 'input', input);
  requireFloat(where, input, 'input');
  if (input.ndim !== 1 && input.ndim !== 2) {
    throw rangeError(where, 'input', 'logits of shape [N, C] or [C] (flatten other dims first: logits.reshape(-1, C))', input);
  }
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['ignoreIndex', 'reduction', 'labelSmoothing']);
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : checkInt(where, 'options.ignoreIndex', o.ignoreIndex, -(2 ** 31));
  const reduction = o.reduction === undefined ? 'mean' : checkOneOf(where, 'options.reduction', o.reduction, REDUCTIONS);
  const ls = o.labelSmoothing === undefined ? 0 : checkNumber(where, 'options.labelSmoothing', o.labelSmoothing);
  if (ls < 0 || ls > 1) throw rangeError(where, 'options.labelSmoothing', 'in [0, 1]', ls);

  const C = input.shape[input.ndim - 1];
  const N = input.ndim === 2 ? input.shape[0] : 1;
  let ids: ArrayLike<number>;
  if (target instanceof Tensor) {
    if (target.dtype !== 'int32') throw typeError(where, 'target', "an int32 tensor of class indices (tensor(ids, { dtype: 'int32' }))", target);
    const want = input.ndim === 2 ? `[${N}]` : '[] or [1]';
    if (target.numel !== N || target.ndim > 1 || (input.ndim === 2 && target.ndim !== 1)) throw rangeError(where, 'target.shape', want, target.shape);
    ids = target._int32Values(where);
  } else if (typeof target === 'number') {
    if (input.ndim !== 1) throw typeError(where, 'target', `${N} class indices for ${N} rows`, target);
    ids = [target];
  } else if (target !== null && typeof target === 'object' && typeof target.length === 'number') {
    ids = target;
    if (ids.length !== N) throw rangeError(where, 'target.length', `${N} (one class index per row of input)`, ids.length);
  } else {
    throw typeError(where, 'target', 'an int32 tensor, an array of class indices or a number', target);
  }
  let count = 0;
  const flat = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    const t = ids[i];
    if (typeof t !== 'number' || !Number.isInteger(t)) throw typeError(where, `target[${i}]`, 'an integer class index', t);
    if (t !== ignoreIndex && (t < 0 || t >= C)) throw rangeError(where, `target[${i}]`, `in [0, ${C}) or ignoreIndex (${ignoreIndex})`, t);
    if (t !== ignoreIndex) count++;
    flat[i] = t;
  }
  const targets = tensor(flat, { dtype: 'int32', shape: [N], device: input.device as 'cpu' });
  return lossOps.crossEntropy(input, targets, ignoreIndex, ls, reduction, count);
}

// The transformer ops (fused native forward and backward each).
export { embedding, rmsNorm, applyRotary, rotaryTables, scaledDotProductAttention } from './transformer';

// Dropout and layer normalisation (their modules: Dropout, LayerNorm).
export { dropout } from './dropout';
export { layerNorm } from './normalization';
