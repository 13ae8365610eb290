// Creating tensors: from data (tensor), filled (full, zeros, ones) and random
// (randn, rand, from the global generator).
import { Tensor } from './tensor';
import { DType, DTYPES } from './dtype';
import { DeviceSpec, parseDevice } from './device';
import { checkShape, checkInt32Value, checkNumberOrNaN } from './checks';
import { checkNumber, checkOptions, checkKnownKeys, checkOneOf, rangeError, typeError } from './errors';
import { numelOf } from './shape';
import { nextRandomKey } from './random';
import * as creation from './ops/creation';
import type { HostArray } from './ops/memory';
import type { RandomKind } from './ops/enums';

export interface TensorOptions {
  dtype?: DType;
  device?: DeviceSpec;
  requiresGrad?: boolean;
}
export interface TensorDataOptions extends TensorOptions {
  shape?: readonly number[];
}

/** Nested arrays of numbers (rectangular), a flat array-like, or a single number. */
export type TensorData = number | ArrayLike<number> | NestedArray;
export interface NestedArray extends ReadonlyArray<number | NestedArray> {}

const INT32_VALUE = 'an integer in [-2147483648, 2147483647] (int32 tensor)';

/** Whether an int32 tensor can hold v exactly (data is never wrapped around or truncated). */
function isInt32(v: number): boolean {
  return Number.isInteger(v) && v >= -2147483648 && v <= 2147483647;
}

const ARRAY_OF: Record<DType, Float32ArrayConstructor | Float64ArrayConstructor | Int32ArrayConstructor> = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  // The halves are written from float32 numbers and rounded to nearest even natively.
  bfloat16: Float32Array,
  float16: Float32Array,
};

function inferDataShape(data: unknown): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    if (cur.length === 0) break;
    cur = cur[0];
  }
  return shape;
}

function flatten(where: string, data: unknown, shape: number[], dtype: DType): HostArray {
  const out = new ARRAY_OF[dtype](numelOf(shape));
  let pos = 0;
  const walk = (v: unknown, dim: number, path: string) => {
    if (dim === shape.length) {
      if (typeof v !== 'number') throw typeError(where, `data${path}`, 'a number', v);
      if (dtype === 'int32' && !isInt32(v)) throw rangeError(where, `data${path}`, INT32_VALUE, v);
      out[pos++] = v;
      return;
    }
    if (!Array.isArray(v) || v.length !== shape[dim]) {
      throw rangeError(where, `data${path}`, `an array of length ${shape[dim]} (nested arrays must be rectangular)`, v);
    }
    for (let i = 0; i < v.length; i++) walk(v[i], dim + 1, `${path}[${i}]`);
  };
  walk(data, 0, '');
  return out;
}

/** The numbers of `data` as a typed array of `dtype` (data itself when it already is one). */
export function toTypedArray(where: string, what: string, data: ArrayLike<number>, dtype: DType): HostArray {
  if (data instanceof ARRAY_OF[dtype]) return data as HostArray;
  if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number') {
    throw typeError(where, what, 'an array of numbers or a typed array', data);
  }
  const out = new ARRAY_OF[dtype](data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (typeof v !== 'number' && typeof v !== 'bigint') throw typeError(where, `${what}[${i}]`, 'a number', v);
    if (dtype === 'int32' && !isInt32(Number(v))) throw rangeError(where, `${what}[${i}]`, INT32_VALUE, v);
    out[i] = Number(v);
  }
  return out;
}

function readOptions(where: string, opts: unknown, extra: readonly string[] = []) {
  const o = checkOptions(where, opts);
  checkKnownKeys(where, o, ['dtype', 'device', 'requiresGrad', ...extra]);
  const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, DTYPES);
  const device = parseDevice(where, 'options.device', o.device);
  const requiresGrad = o.requiresGrad === undefined ? false : o.requiresGrad;
  if (typeof requiresGrad !== 'boolean') throw typeError(where, 'options.requiresGrad', 'a boolean', requiresGrad);
  if (requiresGrad && dtype === 'int32') throw rangeError(where, 'options.dtype', 'a float dtype when requiresGrad is true', dtype);
  return { o, dtype, device, requiresGrad };
}

function finish(t: Tensor, requiresGrad: boolean): Tensor {
  if (requiresGrad) t.requiresGrad_(true);
  return t;
}

/**
 * Creates a tensor from a number, nested arrays or a flat array-like (then
 * `shape` gives the dims). dtype defaults to float32.
 */
export function tensor(data: TensorData, opts?: TensorDataOptions): Tensor {
  const where = 'tensor';
  const { o, dtype, device, requiresGrad } = readOptions(where, opts, ['shape']);
  let flat: HostArray;
  let shape: number[];
  if (typeof data === 'number') {
    flat = toTypedArray(where, 'data', [data], dtype);
    shape = [];
  } else if (Array.isArray(data) && o.shape === undefined) {
    shape = inferDataShape(data);
    flat = flatten(where, data, shape, dtype);
  } else if (data !== null && typeof data === 'object' && typeof (data as ArrayLike<number>).length === 'number') {
    const src = Array.isArray(data) && data.some((v) => Array.isArray(v)) ? null : (data as ArrayLike<number>);
    if (!src) throw typeError(where, 'data', 'a flat array when options.shape is given', data);
    flat = toTypedArray(where, 'data', src, dtype);
    shape = o.shape === undefined ? [flat.length] : checkShape(where, 'options.shape', o.shape);
  } else {
    throw typeError(where, 'data', 'a number, an array of numbers, nested arrays or a typed array', data);
  }
  const numel = numelOf(shape);
  if (flat.length !== numel) {
    throw rangeError(where, 'data length', `${numel} to match shape [${shape.join(', ')}]`, flat.length);
  }
  const t = creation.fromArray(flat, shape, dtype, device);
  t._keepHostInts(flat as Int32Array, flat === data); // the caller's own Int32Array may change
  return finish(t, requiresGrad);
}

/** A tensor filled with `value`. */
export function full(shape: readonly number[], value: number, opts?: TensorOptions): Tensor {
  return filled('full', shape, value, opts);
}

function filled(where: string, shape: readonly number[], value: number, opts?: TensorOptions): Tensor {
  const s = checkShape(where, 'shape', shape);
  checkNumberOrNaN(where, 'value', value);
  const { dtype, device, requiresGrad } = readOptions(where, opts);
  if (dtype === 'int32') checkInt32Value(where, 'value', value);
  return finish(creation.full(s, dtype, device, value), requiresGrad);
}
export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled('zeros', shape, 0, opts);
}
export function ones(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled('ones', shape, 1, opts);
}

function randomTensor(where: string, shape: readonly number[], opts: unknown, kind: RandomKind, a: number, b: number, extra: string[]): Tensor {
  const s = checkShape(where, 'shape', shape);
  const { dtype, device, requiresGrad } = readOptions(where, opts, extra);
  if (dtype === 'int32') throw rangeError(where, 'options.dtype', 'float32, float64, bfloat16 or float16', dtype);
  return finish(creation.random(s, dtype, device, kind, nextRandomKey(), a, b), requiresGrad);
}

/** Normal samples, N(mean, std²) (default N(0, 1)), from the global generator. */
export function randn(shape: readonly number[], opts?: TensorOptions & { mean?: number; std?: number }): Tensor {
  const o = checkOptions('randn', opts);
  const mean = o.mean === undefined ? 0 : checkNumber('randn', 'options.mean', o.mean);
  const std = o.std === undefined ? 1 : checkNumber('randn', 'options.std', o.std);
  if (std < 0) throw rangeError('randn', 'options.std', 'a number >= 0', std);
  return randomTensor('randn', shape, opts, 'normal', mean, std, ['mean', 'std']);
}

/** Uniform samples in [low, high) (default [0, 1)), from the global generator. */
export function rand(shape: readonly number[], opts?: TensorOptions & { low?: number; high?: number }): Tensor {
  const o = checkOptions('rand', opts);
  const low = o.low === undefined ? 0 : checkNumber('rand', 'options.low', o.low);
  const high = o.high === undefined ? 1 : checkNumber('rand', 'options.high', o.high);
  if (!(high >= low)) throw rangeError('rand', 'options.high', `>= options.low (${low})`, high);
  return randomTensor('rand', shape, opts, 'uniform', low, high, ['low', 'high']);
}
