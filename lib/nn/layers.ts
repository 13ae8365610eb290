// Standard layers: Linear, containers and activations.
import { Tensor, DType } from '../tensor';
import { FLOAT_DTYPES } from '../dtype';
import { rand } from '../creation';
import { checkLinearInput, checkLinearWeights } from '../checks';
import * as linearOps from '../ops/linear';
import { DeviceSpec } from '../device';
import { Module } from './module';
import { pyValue } from '../printing';
import { activation } from './activation';
import { checkBool, checkInt, checkOneOf, checkOptions, checkKnownKeys, typeError, rangeError } from '../errors';

export interface LinearOptions {
  bias?: boolean;
  dtype?: DType;
  device?: DeviceSpec;
}

/** y = x W^T + b; weight [out, in] and bias [out] initialised as torch.nn.Linear does. */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  weight: Tensor;
  bias: Tensor | null;

  constructor(inFeatures: number, outFeatures: number, options?: LinearOptions) {
    super();
    const where = 'Linear';
    checkInt(where, 'inFeatures', inFeatures);
    checkInt(where, 'outFeatures', outFeatures);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['bias', 'dtype', 'device']);
    const bias = o.bias === undefined ? true : checkBool(where, 'options.bias', o.bias);
    const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    const device = o.device as DeviceSpec | undefined;
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    // kaiming_uniform_(a = sqrt(5)) reduces to U(-1/sqrt(in), 1/sqrt(in)); the bias uses the same bound.
    const bound = inFeatures > 0 ? 1 / Math.sqrt(inFeatures) : 0;
    this.weight = rand([outFeatures, inFeatures], { low: -bound, high: bound, dtype, device }).requiresGrad_(true);
    this.bias = bias ? rand([outFeatures], { low: -bound, high: bound, dtype, device }).requiresGrad_(true) : null;
  }

  forward(x: Tensor): Tensor {
    const where = 'Linear.forward';
    checkLinearInput(where, x, this.inFeatures);
    // weight and bias may have been replaced since construction: checked as F.linear checks them.
    const b = checkLinearWeights(where, x, this.weight, this.bias);
    return linearOps.linear(x, this.weight, b);
  }

  extraRepr(): string {
    // torch's names and Python's True/False, so the tree reads as torch prints the same model.
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${pyValue(this.bias !== null)}`;
  }
}

// The containers live in containers.ts; re-exported here, where they were first.
export { Sequential, ModuleList, ModuleDict } from './containers';

export class ReLU extends Module {
  forward(x: Tensor): Tensor {
    return activation('ReLU.forward', x, 'relu');
  }
}

export class GELU extends Module {
  readonly approximate: 'none' | 'tanh';
  constructor(options?: { approximate?: 'none' | 'tanh' }) {
    super();
    const o = checkOptions('GELU', options);
    checkKnownKeys('GELU', o, ['approximate']);
    this.approximate = o.approximate === undefined ? 'none' : checkOneOf('GELU', 'options.approximate', o.approximate, ['none', 'tanh'] as const);
  }
  forward(x: Tensor): Tensor {
    return activation('GELU.forward', x, this.approximate === 'tanh' ? 'geluTanh' : 'gelu');
  }
  extraRepr(): string {
    return `approximate='${this.approximate}'`;
  }
}

export class SiLU extends Module {
  forward(x: Tensor): Tensor {
    return activation('SiLU.forward', x, 'silu');
  }
}

/** Returns its input unchanged (a placeholder, as torch.nn.Identity); typed as what it is given. */
export class Identity extends Module {
  forward<T>(x: T): T {
    return x;
  }
}
