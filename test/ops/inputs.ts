// Inputs of registry samples: the same values on every device and in every
// dtype (made on the host from a seeded JS generator, then converted), so
// evaluations can be compared element for element.
import { Tensor, tensor } from '../../lib';
import type { DeviceSpec } from '../../lib';
import { randnArray } from '../helpers/gradcheck';
import type { CallContext, InputSpec, OpInfo, OpSample } from './types';

/** FNV-1a: a stable 31-bit seed from a name. */
export function seedOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return (h >>> 0) % 0x7fffffff;
}

export const sampleSeed = (op: OpInfo, s: OpSample): number => seedOf(`${op.name} ${s.name}`);

export const isInt = (spec: InputSpec): boolean => spec.int32 !== undefined;
export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The values of input `index` of a sample (float64 for float inputs, int32 for ids). */
export function inputValues(spec: InputSpec, seed: number, index: number): Float64Array | Int32Array {
  const n = numel(spec.shape);
  if (spec.int32 !== undefined) {
    const v = spec.int32;
    if ('high' in v) return Int32Array.from({ length: n }, (_, i) => (i * 7919 + 13 + index) % v.high);
    if (v.length !== n) throw new Error(`int32 input ${index}: ${v.length} values for shape [${spec.shape.join(', ')}]`);
    return Int32Array.from(v);
  }
  const d = randnArray(n, seed + 7919 * index);
  if (spec.values) for (let i = 0; i < n; i++) d[i] = spec.values(d[i], i);
  return d;
}

export interface MakeOptions {
  /** Overrides spec.grad (e.g. none when a graph is not wanted). */
  grad?: boolean;
  /** Input i in another dtype / on another device (bad-input checks). */
  dtypeOf?: (i: number) => CallContext['dtype'] | 'int32' | undefined;
  deviceOf?: (i: number) => DeviceSpec | undefined;
}

export function makeInputs(sample: OpSample, ctx: CallContext, seed: number, o: MakeOptions = {}): Tensor[] {
  return sample.inputs.map((spec, i) => {
    const data = inputValues(spec, seed, i);
    const device = o.deviceOf?.(i) ?? ctx.device;
    if (isInt(spec)) return tensor(data, { shape: spec.shape.slice(), dtype: 'int32', device });
    const dtype = o.dtypeOf?.(i) ?? ctx.dtype;
    if (dtype === 'int32') return tensor(Int32Array.from(data, Math.round), { shape: spec.shape.slice(), dtype, device });
    const requiresGrad = (o.grad ?? true) && spec.grad !== false;
    return tensor(data, { shape: spec.shape.slice(), dtype, device, requiresGrad });
  });
}

/** The outputs of a call as a list. */
export const outputs = (o: Tensor | Tensor[]): Tensor[] => (Array.isArray(o) ? o : [o]);
