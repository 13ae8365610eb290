// Layer normalisation (torch.nn.LayerNorm and F.layerNorm): over the last dims given by
// normalizedShape, y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance,
// as torch. Composed of the elementwise ops and sums, so it runs and differentiates on every
// backend and dtype those do.
import { Tensor } from '../tensor';
import { ones, zeros } from '../creation';
import { assertTensor, requireFloat, requireSame } from '../checks';
import { DeviceSpec, parseDevice } from '../device';
import { Module } from './module';
import { checkBool, checkInt, checkKnownKeys, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from '../errors';
import { pyFloat, pyValue } from '../printing';

import { FloatDType, FLOAT_DTYPES } from '../dtype';

/** normalizedShape as torch takes it: one size or a list of sizes. */
function readShape(where: string, what: string, s: unknown): number[] {
  if (typeof s === 'number') return [checkInt(where, what, s)];
  if (!Array.isArray(s)) throw typeError(where, what, 'a size or an array of sizes', s);
  if (s.length === 0) throw rangeError(where, what, 'at least one size', s);
  return s.map((d, i) => checkInt(where, `${what}[${i}]`, d));
}

function layerNormImpl(where: string, x: unknown, shape: readonly number[], weight: unknown, bias: unknown, eps: number): Tensor {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  const k = shape.length;
  const tail = x.shape.slice(x.ndim - k);
  if (x.ndim < k || tail.some((d, i) => d !== shape[i])) {
    throw rangeError(where, 'x', `a tensor whose last ${k === 1 ? 'dim is' : `${k} dims are`} [${shape.join(', ')}] (normalizedShape)`, x);
  }
  const affine: Tensor[] = [];
  for (const [t, name] of [[weight, 'weight'], [bias, 'bias']] as const) {
    if (t === null || t === undefined) continue;
    assertTensor(where, name, t);
    requireFloat(where, t, name);
    requireSame(where, x, 'x', t, name);
    if (t.ndim !== k || t.shape.some((d, i) => d !== shape[i])) {
      throw rangeError(where, name, `a tensor of shape [${shape.join(', ')}] (normalizedShape) or null`, t);
    }
    affine.push(t);
  }
  const dims = shape.map((_, i) => x.ndim - k + i);
  const xc = x.sub(x.mean(dims, true));
  const variance = xc.mul(xc).mean(dims, true);
  let y = xc.div(variance.add(eps).sqrt());
  if (weight) y = y.mul(weight as Tensor);
  if (bias) y = y.add(bias as Tensor);
  return y;
}

/**
 * Layer normalisation over the last dims of x given by normalizedShape (a size or a list):
 * (x - mean) / sqrt(var + eps) (biased variance), times weight and plus bias when given (each
 * of shape normalizedShape). As torch's F.layer_norm; eps defaults to 1e-5.
 */
export function layerNorm(x: Tensor, normalizedShape: number | readonly number[], weight: Tensor | null = null, bias: Tensor | null = null,
  eps = 1e-5): Tensor {
  const where = 'F.layerNorm';
  const shape = readShape(where, 'normalizedShape', normalizedShape);
  checkNumber(where, 'eps', eps);
  if (eps < 0) throw rangeError(where, 'eps', 'a number >= 0', eps);
  return layerNormImpl(where, x, shape, weight, bias, eps);
}

export interface LayerNormOptions {
  /** Added to the variance; default 1e-5. */
  eps?: number;
  /** A learnable weight (ones) and bias (zeros) of shape normalizedShape; default true. */
  elementwiseAffine?: boolean;
  /** With elementwiseAffine: a bias too; default true. */
  bias?: boolean;
  dtype?: FloatDType;
  device?: DeviceSpec;
}

/** torch.nn.LayerNorm: normalises over the last dims (normalizedShape), with weight and bias. */
export class LayerNorm extends Module {
  readonly normalizedShape: readonly number[];
  readonly eps: number;
  readonly elementwiseAffine: boolean;
  weight: Tensor | null;
  bias: Tensor | null;

  constructor(normalizedShape: number | readonly number[], options?: LayerNormOptions) {
    super();
    const where = 'LayerNorm';
    const shape = readShape(where, 'normalizedShape', normalizedShape);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['eps', 'elementwiseAffine', 'bias', 'dtype', 'device']);
    const eps = o.eps === undefined ? 1e-5 : checkNumber(where, 'options.eps', o.eps);
    if (eps < 0) throw rangeError(where, 'options.eps', 'a number >= 0', eps);
    const affine = o.elementwiseAffine === undefined ? true : checkBool(where, 'options.elementwiseAffine', o.elementwiseAffine);
    const bias = o.bias === undefined ? true : checkBool(where, 'options.bias', o.bias);
    const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    parseDevice(where, 'options.device', o.device);
    const device = o.device as DeviceSpec | undefined;
    this.normalizedShape = Object.freeze(shape);
    this.eps = eps;
    this.elementwiseAffine = affine;
    this.weight = affine ? ones(shape, { dtype, device }).requiresGrad_(true) : null;
    this.bias = affine && bias ? zeros(shape, { dtype, device }).requiresGrad_(true) : null;
  }

  /** x [..., *normalizedShape] -> same shape. */
  forward(x: Tensor): Tensor {
    return layerNormImpl('LayerNorm.forward', x, this.normalizedShape, this.weight, this.bias, this.eps);
  }

  extraRepr(): string {
    return `${pyValue(this.normalizedShape)}, eps=${pyFloat(this.eps)}, elementwise_affine=${pyValue(this.elementwiseAffine)}`;
  }
}
