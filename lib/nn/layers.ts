// Standard layers: Linear, containers and activations.
import { Tensor, DType } from '../tensor';
import { rand } from '../creation';
import { checkLinearInput, checkLinearWeights } from '../checks';
import * as linearOps from '../ops/linear';
import { DeviceSpec } from '../device';
import { Module } from './module';
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
    const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, ['float32', 'float64'] as const);
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
    return `inFeatures=${this.inFeatures}, outFeatures=${this.outFeatures}, bias=${this.bias !== null}`;
  }
}

/** Applies its children in order; they are named '0', '1', …. */
export class Sequential extends Module {
  constructor(...modules: Module[]) {
    super();
    modules.forEach((m, i) => {
      if (!(m instanceof Module)) throw typeError('Sequential', `modules[${i}]`, 'a Module', m);
      (this as unknown as Record<string, Module>)[String(i)] = m;
    });
  }

  get length(): number {
    let n = 0;
    while ((this as unknown as Record<string, unknown>)[String(n)] instanceof Module) n++;
    return n;
  }

  at(i: number): Module {
    checkInt('Sequential.at', 'index', i);
    const m = (this as unknown as Record<string, unknown>)[String(i)];
    if (!(m instanceof Module)) throw rangeError('Sequential.at', 'index', `< ${this.length}`, i);
    return m;
  }

  forward(x: unknown): unknown {
    // By index, not children(): the same module may appear twice and runs twice.
    let cur = x;
    for (let i = 0, n = this.length; i < n; i++) cur = this.at(i).forward(cur);
    return cur;
  }
}

/** A list of modules, registered as children '0', '1', … (no forward of its own). */
export class ModuleList extends Module {
  constructor(modules: Iterable<Module> = []) {
    super();
    for (const m of modules) this.append(m);
  }

  get length(): number {
    let n = 0;
    while ((this as unknown as Record<string, unknown>)[String(n)] instanceof Module) n++;
    return n;
  }

  append(m: Module): this {
    if (!(m instanceof Module)) throw typeError('ModuleList.append', 'module', 'a Module', m);
    (this as unknown as Record<string, Module>)[String(this.length)] = m;
    return this;
  }

  at(i: number): Module {
    checkInt('ModuleList.at', 'index', i);
    if (i >= this.length) throw rangeError('ModuleList.at', 'index', `< ${this.length}`, i);
    return (this as unknown as Record<string, Module>)[String(i)];
  }

  *[Symbol.iterator](): Iterator<Module> {
    for (let i = 0, n = this.length; i < n; i++) yield this.at(i);
  }

  forward(): never {
    throw new Error('ModuleList has no forward(); iterate over it and call each module');
  }
}

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

export class Identity extends Module {
  forward(x: unknown): unknown {
    return x;
  }
}
