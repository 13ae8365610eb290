// Tensor: a handle to native storage plus shape, dtype and device, with
// reverse-mode autograd. Ops call the native backend and, when any input needs
// a gradient and grad mode is on, record a GradFn that backward() walks.
import { native, NativeTensor } from './native';
import { GradFn, isGradEnabled } from './autograd';
import { DeviceSpec, ParsedDevice, parseDevice } from './device';
import { checkInt, checkNumber, checkOptions, checkKnownKeys, checkOneOf, rangeError, typeError } from './errors';
import { nextRandomKey } from './random';

export type DType = 'float32' | 'float64' | 'int32';
export const DTYPES: readonly DType[] = ['float32', 'float64', 'int32'];
const DTYPE_CODE: Record<DType, number> = { float32: 0, float64: 1, int32: 2 };
const ARRAY_OF: Record<DType, Float32ArrayConstructor | Float64ArrayConstructor | Int32ArrayConstructor> = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
};

// Native op codes (src/backend.h).
const enum Bin { Add = 0, Sub = 1, Mul = 2, Div = 3 }
export const enum Un { Relu = 0, Gelu = 1, GeluTanh = 2, Silu = 3, Exp = 4, Log = 5, Neg = 6, Sqrt = 7, Abs = 8 }

/** State shared by a tensor and its views (reshape, detach): one storage. */
interface Store {
  version: number; // bumped by in-place writes, so stale saved tensors are caught
  disposed: boolean;
  escaped?: boolean; // held by something long-lived (a .grad, optimiser state): tidy() never frees it
  // The values of an int32 GPU tensor as they were uploaded, valid while `version` is unchanged:
  // the ops that must check ids on the host (embedding, cross-entropy) read them without waiting
  // for the device.
  hostInts?: { version: number; values: Int32Array };
}

// Host copies of int32 GPU tensors are kept up to this many elements (ids, targets).
const HOST_INTS_MAX = 1 << 22;

// Open tidy() scopes, innermost last: the tensors that created a storage inside each.
const scopes: Tensor[][] = [];

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

export class Tensor {
  /** @internal */ _h: NativeTensor;
  /** @internal */ _store: Store;
  /** @internal */ _gradFn: GradFn | null = null;
  /** @internal */ _device: ParsedDevice;
  private _shape: readonly number[];
  private _dtype: DType;
  private _requiresGrad = false;
  private _grad: Tensor | null = null;

  /** @internal Tensors are made by tensor(), zeros(), randn() and the ops. */
  constructor(h: NativeTensor, shape: readonly number[], dtype: DType, device: ParsedDevice, store?: Store) {
    this._h = h;
    this._shape = Object.freeze(shape.slice());
    this._dtype = dtype;
    this._device = device;
    if (store) {
      this._store = store;
    } else {
      this._store = { version: 0, disposed: false };
      if (scopes.length) scopes[scopes.length - 1].push(this);
    }
  }

  /** Dimensions, outermost first. */
  get shape(): readonly number[] {
    return this._shape;
  }
  get dtype(): DType {
    return this._dtype;
  }
  /** 'cpu' or 'cuda:N'. */
  get device(): string {
    return this._device.name;
  }
  get numel(): number {
    let n = 1;
    for (const d of this._shape) n *= d;
    return n;
  }
  get ndim(): number {
    return this._shape.length;
  }
  /** True when this tensor was not produced by a recorded op. */
  get isLeaf(): boolean {
    return this._gradFn === null;
  }
  /** Name of the op that produced this tensor, or null for a leaf. */
  get gradFn(): string | null {
    return this._gradFn ? this._gradFn.name : null;
  }
  get isDisposed(): boolean {
    return this._store.disposed;
  }

  get requiresGrad(): boolean {
    return this._requiresGrad;
  }
  set requiresGrad(flag: boolean) {
    this.requiresGrad_(flag);
  }
  /** Sets requiresGrad in place (leaves only, float dtypes only); returns this. */
  requiresGrad_(flag = true): this {
    if (typeof flag !== 'boolean') throw typeError('Tensor.requiresGrad', 'flag', 'a boolean', flag);
    if (this._gradFn) {
      throw new Error('Tensor.requiresGrad: only leaf tensors can change requiresGrad; use detach() for a non-leaf');
    }
    if (flag && this._dtype === 'int32') {
      throw rangeError('Tensor.requiresGrad', 'dtype', 'float32 or float64 for a tensor that requires grad', this._dtype);
    }
    this._requiresGrad = flag;
    return this;
  }

  /** Gradient accumulated by backward() (leaves with requiresGrad only). */
  get grad(): Tensor | null {
    return this._grad;
  }
  set grad(g: Tensor | null) {
    if (g !== null) {
      assertTensor('Tensor.grad', 'value', g);
      if (!sameShape(g._shape, this._shape) || g._dtype !== this._dtype || g._device.name !== this._device.name) {
        throw rangeError('Tensor.grad', 'value', `a ${this._dtype} tensor of shape [${this._shape.join(', ')}] on ${this.device}`, g);
      }
      g._store.escaped = true;
    }
    this._grad = g;
  }

  /** A short description, used in error messages. */
  describe(): string {
    const state = this._store.disposed ? ', disposed' : '';
    return `Tensor(shape [${this._shape.join(', ')}], ${this._dtype}, ${this.device}${state})`;
  }
  toString(): string {
    return this.describe();
  }

  /** @internal The live handle; throws once disposed. */
  _live(where: string): NativeTensor {
    if (this._store.disposed) {
      const e = new Error(`${where}: tensor has been disposed`);
      (e as NodeJS.ErrnoException).code = 'ERR_TENSOR_DISPOSED';
      throw e;
    }
    return this._h;
  }

  /** @internal A new tensor on this one's device with the given handle. */
  _make(h: NativeTensor, shape: readonly number[], dtype: DType = this._dtype): Tensor {
    return new Tensor(h, shape, dtype, this._device);
  }

  // ---------------------------------------------------------------- data out

  /** A flat, row-major copy of the data (Float32Array, Float64Array or Int32Array). */
  toArray(): Float32Array | Float64Array | Int32Array {
    return native.toArray(this._live('Tensor.toArray'));
  }

  /**
   * @internal The values of an int32 tensor for host-side checks, from the host copy kept since the
   * last write when there is one (no wait for the device), else read back. Callers must not modify it.
   */
  _int32Values(where: string): Int32Array {
    this._live(where);
    const c = this._store.hostInts;
    if (c && c.version === this._store.version) return c.values;
    return native.toArray(this._h) as Int32Array;
  }

  /** @internal Keeps `values` (what this int32 GPU tensor now holds) as its host copy. */
  _keepHostInts(values: Int32Array, copy: boolean): void {
    if (this._dtype !== 'int32' || this._device.type === 0 || values.length > HOST_INTS_MAX) return;
    this._store.hostInts = { version: this._store.version, values: copy ? values.slice() : values };
  }

  /** The data as nested arrays of numbers (a number for a 0-d tensor). */
  tolist(): number | NestedList {
    const flat = this.toArray();
    const build = (dim: number, off: number): number | NestedList => {
      if (dim === this._shape.length) return flat[off];
      const stride = this._shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      const out: (number | NestedList)[] = [];
      for (let i = 0; i < this._shape[dim]; i++) out.push(build(dim + 1, off + i * stride));
      return out as NestedList;
    };
    return build(0, 0);
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.numel !== 1) {
      throw rangeError('Tensor.item', 'the tensor', 'a tensor with exactly one element', this);
    }
    return this.toArray()[0];
  }

  // ------------------------------------------------------------ memory, copy

  /**
   * Frees the native memory now (the garbage collector would do it later).
   * Views sharing the storage become unusable too; idempotent.
   */
  dispose(): void {
    if (this._store.disposed) return;
    native.dispose(this._h);
    this._store.disposed = true;
    if (this._grad) this._grad.dispose();
    this._grad = null;
    if (this._gradFn) releaseGradFn(this._gradFn);
    this._gradFn = null;
  }

  /** A tensor sharing this one's data, cut from the graph (requiresGrad false). */
  detach(): Tensor {
    const h = native.view(this._live('Tensor.detach'), this._shape as number[]);
    return new Tensor(h, this._shape, this._dtype, this._device, this._store);
  }

  /** A copy with its own storage (differentiable). */
  clone(): Tensor {
    const out = this._make(native.affine(this._live('Tensor.clone'), 1, 0), this._shape);
    return record(out, 'CloneBackward', [this], (g) => [g]);
  }

  /**
   * Copies src into this tensor in place, outside autograd. src is a tensor with
   * the same number of elements (any dtype or device) or an array-like of numbers.
   */
  copy_(src: Tensor | ArrayLike<number>): this {
    const where = 'Tensor.copy_';
    const h = this._live(where);
    if (src instanceof Tensor) {
      if (src.numel !== this.numel) {
        throw rangeError(where, 'src', `a tensor with ${this.numel} elements (shape [${this._shape.join(', ')}])`, src);
      }
      native.copy_(h, src._live(where));
    } else {
      const arr = toTypedArray(where, 'src', src, this._dtype);
      if (arr.length !== this.numel) {
        throw rangeError(where, 'src.length', `${this.numel} (the tensor's numel)`, arr.length);
      }
      const tmp = native.fromArray(arr, this._shape as number[], DTYPE_CODE[this._dtype], 0, 0);
      native.copy_(h, tmp);
      native.dispose(tmp);
      this._store.version++;
      this._keepHostInts(arr as Int32Array, arr === src);
      return this;
    }
    this._store.version++;
    return this;
  }

  /** Fills with zeros in place, outside autograd. */
  zero_(): this {
    return this.fill_(0);
  }

  /** Fills with value in place, outside autograd. */
  fill_(value: number): this {
    checkNumberOrNaN('Tensor.fill_', 'value', value);
    if (this._dtype === 'int32') checkInt32Value('Tensor.fill_', 'value', value);
    this._live('Tensor.fill_');
    const tmp = native.full(this._shape as number[], DTYPE_CODE[this._dtype], this._device.type, this._device.index, value);
    native.copy_(this._live('Tensor.fill_'), tmp);
    native.dispose(tmp);
    this._store.version++;
    return this;
  }

  /** @internal In-place bump after native code wrote into this tensor. */
  _bumpVersion(): void {
    this._store.version++;
  }

  /** @internal Moves this tensor's storage (Module.to keeps parameter identity). */
  _replaceWith(other: Tensor): void {
    other._store.escaped = true;
    this._h = other._h;
    this._device = other._device;
    this._dtype = other._dtype;
    this._store = other._store;
  }

  /**
   * This tensor on another device or with another dtype: to('cuda'), to('cpu'),
   * to('float64'). Returns this when nothing changes. Differentiable.
   */
  to(target: DeviceSpec | DType): Tensor {
    const where = 'Tensor.to';
    this._live(where);
    let dev = this._device;
    let dtype = this._dtype;
    if (typeof target === 'string' && (DTYPES as readonly string[]).includes(target)) {
      dtype = target as DType;
    } else {
      dev = parseDevice(where, 'device', target);
    }
    if (dev.name === this._device.name && dtype === this._dtype) return this;
    const h = native.to(this._live(where), dev.type, dev.index, DTYPE_CODE[dtype]);
    const out = new Tensor(h, this._shape, dtype, dev);
    if (dtype === 'int32') {
      // Ids moved to a GPU keep a host copy when reading one costs no wait.
      if (this._dtype === 'int32' && dev.type !== 0) {
        const c = this._store.hostInts;
        if (c && c.version === this._store.version) out._keepHostInts(c.values, false);
        else if (this._device.type === 0) out._keepHostInts(native.toArray(this._h) as Int32Array, false);
      }
      return out;
    }
    const from = this._device.name === 'cpu' ? 'cpu' : (this._device.name as DeviceSpec);
    const fromDtype = this._dtype;
    return record(out, 'ToBackward', [this], (g) => [g.to(from).to(fromDtype)]);
  }
  cpu(): Tensor {
    return this.to('cpu');
  }
  cuda(index = 0): Tensor {
    checkInt('Tensor.cuda', 'index', index);
    return this.to(`cuda:${index}`);
  }

  // -------------------------------------------------------------- autograd

  /**
   * Computes gradients of this tensor with respect to every leaf that requires
   * grad, accumulating them into .grad. A non-scalar needs `grad` (dL/dthis).
   * The graph is released afterwards.
   */
  backward(grad?: Tensor): void {
    const where = 'Tensor.backward';
    this._live(where);
    if (!this._requiresGrad) {
      throw new Error(`${where}: this tensor does not require grad and has no graph (did every input have requiresGrad false, or was it made inside noGrad?)`);
    }
    let g: Tensor;
    let userGrad = false;
    if (grad === undefined) {
      if (this.numel !== 1) {
        throw rangeError(where, 'grad', `given for a non-scalar output (shape [${this._shape.join(', ')}])`, undefined);
      }
      g = this._make(native.full(this._shape as number[], DTYPE_CODE[this._dtype], this._device.type, this._device.index, 1), this._shape);
    } else {
      assertTensor(where, 'grad', grad);
      if (!sameShape(grad._shape, this._shape) || grad._dtype !== this._dtype || grad.device !== this.device) {
        throw rangeError(where, 'grad', `a ${this._dtype} tensor of shape [${this._shape.join(', ')}] on ${this.device}`, grad);
      }
      grad._live(where);
      g = grad;
      userGrad = true;
    }
    runBackward(this, g, userGrad);
  }

  // ------------------------------------------------------------ elementwise

  /** this + other, broadcasting. */
  add(other: Tensor | number): Tensor {
    return binaryOp('Tensor.add', this, other, Bin.Add);
  }
  /** this - other, broadcasting. */
  sub(other: Tensor | number): Tensor {
    return binaryOp('Tensor.sub', this, other, Bin.Sub);
  }
  /** this * other (elementwise), broadcasting. */
  mul(other: Tensor | number): Tensor {
    return binaryOp('Tensor.mul', this, other, Bin.Mul);
  }
  /** this / other (elementwise), broadcasting. */
  div(other: Tensor | number): Tensor {
    return binaryOp('Tensor.div', this, other, Bin.Div);
  }
  neg(): Tensor {
    return unaryOp('Tensor.neg', this, Un.Neg);
  }
  relu(): Tensor {
    return unaryOp('Tensor.relu', this, Un.Relu);
  }
  /** GELU; approximate 'none' uses erf (torch's default), 'tanh' the tanh formula. */
  gelu(approximate: 'none' | 'tanh' = 'none'): Tensor {
    checkOneOf('Tensor.gelu', 'approximate', approximate, ['none', 'tanh'] as const);
    return unaryOp('Tensor.gelu', this, approximate === 'tanh' ? Un.GeluTanh : Un.Gelu);
  }
  silu(): Tensor {
    return unaryOp('Tensor.silu', this, Un.Silu);
  }
  exp(): Tensor {
    return unaryOp('Tensor.exp', this, Un.Exp);
  }
  log(): Tensor {
    return unaryOp('Tensor.log', this, Un.Log);
  }
  sqrt(): Tensor {
    return unaryOp('Tensor.sqrt', this, Un.Sqrt);
  }
  /** |x|; its gradient is sign(x), 0 at 0 (as torch). */
  abs(): Tensor {
    return unaryOp('Tensor.abs', this, Un.Abs);
  }

  /** Softmax along dim (default the last), computed stably (max-subtracted). */
  softmax(dim = -1): Tensor {
    const where = 'Tensor.softmax';
    requireFloat(where, this);
    if (this.ndim === 0) throw rangeError(where, 'the tensor', 'at least 1-D', this);
    const d = normalizeDim(where, 'dim', dim, this.ndim);
    if (d !== this.ndim - 1) return this.transpose(d, -1).softmax(-1).transpose(d, -1);
    const out = this._make(native.softmax(this._h), this.shape);
    return record(out, 'SoftmaxBackward', [this], (g) => [g._make(native.softmaxBackward(out._h, g._h), g.shape)], [out]);
  }

  // -------------------------------------------------------------- reductions

  /** Sum over all elements, or over dim(s) (negative dims count from the end). */
  sum(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.sum';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
    const kept = this._shape.map((d, i) => (dims.includes(i) ? 1 : d));
    const outShape = keepdim ? kept : this._shape.filter((_, i) => !dims.includes(i));
    const summed = native.sumTo(this._live(where), kept);
    const h = keepdim ? summed : native.view(summed, outShape);
    const out = this._make(h, outShape);
    const inShape = this._shape as number[];
    return record(out, 'SumBackward', [this], (g) => {
      const gk = native.view(g._h, kept);
      return [g._make(native.expand(gk, inShape), inShape)];
    });
  }

  /** Mean over all elements, or over dim(s). */
  mean(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.mean';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    const count = dims.reduce((n, i) => n * this._shape[i], 1);
    return this.sum(dims, keepdim).mul(1 / count);
  }

  // ------------------------------------------------------------------ shape

  /** Same data, new shape (one dim may be -1). Shares storage with this tensor. */
  reshape(...shape: number[] | [readonly number[]]): Tensor {
    const where = 'Tensor.reshape';
    const want = (Array.isArray(shape[0]) ? shape[0] : shape) as readonly number[];
    const target = inferShape(where, want, this.numel, this._shape);
    const h = native.view(this._live(where), target);
    const out = new Tensor(h, target, this._dtype, this._device, this._store);
    const inShape = this._shape;
    return record(out, 'ReshapeBackward', [this], (g) => [g.reshape(inShape)]);
  }
  /** Alias of reshape (all tensors are contiguous). */
  view(...shape: number[] | [readonly number[]]): Tensor {
    return this.reshape(...shape);
  }

  /** Reorders dims (copies the data). */
  permute(...dims: number[] | [readonly number[]]): Tensor {
    const where = 'Tensor.permute';
    const perm = ((Array.isArray(dims[0]) ? dims[0] : dims) as readonly number[]).slice();
    if (perm.length !== this.ndim) throw rangeError(where, 'dims', `a permutation of ${this.ndim} dims`, perm);
    const norm = perm.map((d, i) => normalizeDim(where, `dims[${i}]`, d, this.ndim));
    if (new Set(norm).size !== norm.length) throw rangeError(where, 'dims', 'a permutation (no repeats)', perm);
    const out = this._make(native.permute(this._live(where), norm), norm.map((d) => this._shape[d]));
    const inverse = norm.map((_, i) => norm.indexOf(i));
    return record(out, 'PermuteBackward', [this], (g) => [g.permute(inverse)]);
  }

  /** Swaps two dims (copies the data). */
  transpose(dim0: number, dim1: number): Tensor {
    const where = 'Tensor.transpose';
    const a = normalizeDim(where, 'dim0', dim0, this.ndim);
    const b = normalizeDim(where, 'dim1', dim1, this.ndim);
    const perm = this._shape.map((_, i) => i);
    perm[a] = b;
    perm[b] = a;
    return this.permute(perm);
  }
  /** Transpose of a 2-D tensor. */
  t(): Tensor {
    if (this.ndim !== 2) throw rangeError('Tensor.t', 'the tensor', 'a 2-D tensor', this);
    return this.transpose(0, 1);
  }

  // ----------------------------------------------------------------- matmul

  /** Matrix product with torch.matmul's rules (1-D, 2-D and broadcast batches). */
  matmul(other: Tensor): Tensor {
    return matmul('Tensor.matmul', this, other);
  }
}

export type NestedList = (number | NestedList)[];

// ===================================================================== helpers

/** @internal Clears .grad of each tensor: to null (freeing it) or to zeros in place. */
export function clearGrads(tensors: Iterable<Tensor>, setToNone: boolean): void {
  for (const p of tensors) {
    if (!p.grad) continue;
    if (setToNone) {
      p.grad.dispose();
      p.grad = null;
    } else {
      p.grad.zero_();
    }
  }
}

/**
 * Runs fn and then frees every tensor created inside it, except the ones it
 * returns (a tensor, or tensors inside returned arrays, plain objects, Maps,
 * Sets, and the parameters and buffers of a returned Module), tensors that
 * require grad as leaves (parameters), gradients, optimiser state and tensors
 * passed to keep(). Scopes nest: what an inner tidy returns belongs to the
 * outer one. fn must be synchronous. A returned tensor's graph is released,
 * so call backward() inside the scope.
 */
export function tidy<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw typeError('tidy', 'fn', 'a function', fn);
  scopes.push([]);
  let result: T | undefined;
  let ok = false;
  try {
    result = fn();
    ok = true;
  } finally {
    const created = scopes.pop() as Tensor[];
    const kept = new Set<Store>();
    const async = ok && result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function';
    if (ok && !async) collectStores(result, kept, new Set(), 0);
    const outer = scopes.length ? scopes[scopes.length - 1] : null;
    for (const t of created) {
      const st = t._store;
      if (st.disposed) continue;
      if (st.escaped || kept.has(st) || (t.isLeaf && t.requiresGrad)) {
        if (outer && !st.escaped) outer.push(t);
        continue;
      }
      t.dispose();
    }
    if (async) {
      // eslint-disable-next-line no-unsafe-finally
      throw new TypeError('tidy: fn returned a Promise; tidy needs a synchronous function (tensors made after an await would escape the scope)');
    }
  }
  return result as T;
}

/** Exempts t (and every view of its storage) from the enclosing tidy() scopes; returns t. */
export function keep<T extends Tensor>(t: T): T {
  assertTensor('keep', 't', t);
  t._store.escaped = true;
  return t;
}

function collectStores(v: unknown, out: Set<Store>, seen: Set<object>, depth: number): void {
  if (v === null || typeof v !== 'object' || depth > 16 || seen.has(v)) return;
  seen.add(v);
  if (v instanceof Tensor) {
    out.add(v._store);
    if (v.grad) out.add(v.grad._store);
    return;
  }
  const m = v as { namedParameters?: unknown; namedBuffers?: unknown };
  if (typeof m.namedParameters === 'function' && typeof m.namedBuffers === 'function') {
    // A Module: its parameters and buffers (duck-typed: nn/module imports this file).
    const mod = v as { namedParameters(): Iterable<[string, Tensor]>; namedBuffers(): Iterable<[string, Tensor]> };
    for (const [, p] of mod.namedParameters()) collectStores(p, out, seen, depth + 1);
    for (const [, b] of mod.namedBuffers()) collectStores(b, out, seen, depth + 1);
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) collectStores(x, out, seen, depth + 1);
  } else if (v instanceof Map) {
    for (const [k, x] of v) {
      collectStores(k, out, seen, depth + 1);
      collectStores(x, out, seen, depth + 1);
    }
  } else if (v instanceof Set) {
    for (const x of v) collectStores(x, out, seen, depth + 1);
  } else {
    const proto = Object.getPrototypeOf(v);
    if (proto === Object.prototype || proto === null) {
      for (const x of Object.values(v as Record<string, unknown>)) collectStores(x, out, seen, depth + 1);
    }
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** A value an int32 tensor can hold (fractions truncate, as in torch; NaN and out-of-range values cannot). */
function checkInt32Value(where: string, what: string, v: number): void {
  if (!(v > -2147483649 && v < 2147483648)) {
    throw rangeError(where, what, 'a number an int32 tensor can hold (integers in [-2147483648, 2147483647])', v);
  }
}

function checkNumberOrNaN(where: string, what: string, v: unknown): void {
  if (typeof v !== 'number') throw typeError(where, what, 'a number', v);
}

/** @internal */
export function assertTensor(where: string, what: string, v: unknown): asserts v is Tensor {
  if (!(v instanceof Tensor)) throw typeError(where, what, 'a Tensor', v);
}

/** @internal Throws unless t is a live float tensor. */
export function requireFloat(where: string, t: Tensor, what = 'the tensor'): void {
  t._live(where);
  if (t.dtype === 'int32') throw rangeError(where, `${what}'s dtype`, 'float32 or float64', t.dtype);
}

/** @internal Inputs of one op must share device and dtype. */
export function requireSame(where: string, a: Tensor, an: string, b: Tensor, bn: string): void {
  if (a.device !== b.device) {
    throw new RangeError(`${where}: ${an} is on ${a.device} but ${bn} is on ${b.device}; move one with .to()`);
  }
  if (a.dtype !== b.dtype) {
    throw new TypeError(`${where}: ${an} is ${a.dtype} but ${bn} is ${b.dtype}; convert one with .to('${a.dtype}')`);
  }
}

function normalizeDim(where: string, what: string, d: unknown, ndim: number): number {
  if (typeof d !== 'number' || !Number.isInteger(d)) throw typeError(where, what, 'an integer', d);
  const n = Math.max(ndim, 1);
  if (d < -n || d >= n) throw rangeError(where, what, `in [${-n}, ${n - 1}]`, d);
  return d < 0 ? d + n : d;
}

function normalizeDims(where: string, dim: unknown, ndim: number): number[] {
  if (dim === undefined || dim === null) return Array.from({ length: ndim }, (_, i) => i);
  const list = typeof dim === 'number' ? [dim] : Array.isArray(dim) ? dim : null;
  if (!list) throw typeError(where, 'dim', 'an integer or an array of integers', dim);
  const out = list.map((d, i) => normalizeDim(where, Array.isArray(dim) ? `dim[${i}]` : 'dim', d, ndim));
  if (new Set(out).size !== out.length) throw rangeError(where, 'dim', 'distinct dims', dim);
  return ndim === 0 ? [] : out;
}

/** @internal Validates a shape argument (non-negative integers). */
export function checkShape(where: string, what: string, shape: unknown): number[] {
  if (!Array.isArray(shape)) throw typeError(where, what, 'an array of non-negative integers', shape);
  shape.forEach((d, i) => checkInt(where, `${what}[${i}]`, d));
  const numel = shape.reduce((a: number, b: number) => a * b, 1);
  if (numel > Number.MAX_SAFE_INTEGER) throw rangeError(where, what, 'a shape with at most 2^53 - 1 elements', shape);
  return shape.slice();
}

function inferShape(where: string, want: readonly number[], numel: number, from: readonly number[]): number[] {
  if (!Array.isArray(want)) throw typeError(where, 'shape', 'an array of integers', want);
  let infer = -1;
  let known = 1;
  want.forEach((d, i) => {
    if (d === -1) {
      if (infer >= 0) throw rangeError(where, 'shape', 'at most one -1', want);
      infer = i;
    } else {
      checkInt(where, `shape[${i}]`, d);
      known *= d;
    }
  });
  const out = want.slice();
  if (infer >= 0) {
    if (known === 0 || numel % known !== 0) {
      throw rangeError(where, 'shape', `compatible with ${numel} elements (from shape [${from.join(', ')}])`, want);
    }
    out[infer] = numel / known;
  } else if (known !== numel) {
    throw rangeError(where, 'shape', `one with ${numel} elements (from shape [${from.join(', ')}])`, want);
  }
  return out;
}

function broadcastShapes(where: string, a: Tensor, b: Tensor): number[] {
  const r = Math.max(a.ndim, b.ndim);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = i < r - a.ndim ? 1 : a.shape[i - (r - a.ndim)];
    const db = i < r - b.ndim ? 1 : b.shape[i - (r - b.ndim)];
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${where}: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be broadcast together (dim ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** @internal A view of t with another shape, sharing its storage and version counter. */
export function viewOf(t: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(t.shape, shape)) return t;
  return new Tensor(native.view(t._h, shape as number[]), shape, t.dtype, t._device, t._store);
}

/** @internal Sums a gradient down to `shape` (undoing broadcasting); no-op when equal. */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  const kept = shape.slice();
  const h = native.sumTo(g._h, kept);
  return g._make(h, shape);
}

// ===================================================================== graph

/**
 * @internal Attaches a GradFn to `out` when grad mode is on and an input
 * requires grad. `saved` are the user-visible tensors backward reads (checked
 * against in-place changes); `release` frees internal buffers kept for backward.
 */
export function record(
  out: Tensor,
  name: string,
  inputs: Tensor[],
  backward: (g: Tensor) => (Tensor | null)[],
  saved: Tensor[] = [],
  release?: () => void,
): Tensor {
  if (!isGradEnabled() || !inputs.some((t) => t.requiresGrad)) {
    if (release) release();
    return out;
  }
  out._gradFn = {
    name,
    inputs,
    needs: inputs.map((t) => t.requiresGrad),
    saved: saved.map((t) => [t, t._store.version]),
    backward,
    release,
  };
  (out as unknown as { _requiresGrad: boolean })._requiresGrad = true;
  return out;
}

function releaseGradFn(fn: GradFn): void {
  if (fn.release) fn.release();
  fn.release = undefined;
  fn.backward = null;
  fn.inputs = [];
  fn.saved = [];
}

// Reverse-mode engine. Gradients flowing between nodes are owned by the engine
// and freed as soon as they are consumed; a count per storage keeps views and
// shared results alive while anything still refers to them.
function runBackward(root: Tensor, rootGrad: Tensor, userGrad: boolean): void {
  const keep = new Set<Store>(); // storages the engine must never free
  const refs = new Map<Store, number>();
  const hold = (t: Tensor) => refs.set(t._store, (refs.get(t._store) ?? 0) + 1);
  const drop = (t: Tensor) => {
    const n = (refs.get(t._store) ?? 1) - 1;
    if (n > 0) {
      refs.set(t._store, n);
      return;
    }
    refs.delete(t._store);
    if (!keep.has(t._store)) t.dispose();
  };
  const accumulateLeaf = (leaf: Tensor, g: Tensor) => {
    if (leaf._store.disposed) return;
    if (leaf.grad === null) {
      // Take the buffer when nothing else refers to it, else copy (so later
      // in-place accumulation cannot change another pending gradient).
      const sole = (refs.get(g._store) ?? 0) === 1 && !keep.has(g._store);
      const owned = sole ? g : g._make(native.affine(g._h, 1, 0), g.shape);
      keep.add(owned._store);
      leaf.grad = viewOf(owned, leaf.shape);
    } else {
      native.axpy_(leaf.grad._live('backward'), g._h, 1);
    }
    drop(g);
  };

  if (userGrad) keep.add(rootGrad._store);
  hold(rootGrad);
  const top = root._gradFn;
  if (!top) {
    accumulateLeaf(root, rootGrad);
    return;
  }

  // Topological order (iterative DFS: deep graphs must not overflow the stack).
  const order: GradFn[] = [];
  const seen = new Set<GradFn>();
  const stack: [GradFn, number][] = [[top, 0]];
  seen.add(top);
  while (stack.length) {
    const frame = stack[stack.length - 1];
    const [fn, i] = frame;
    if (i < fn.inputs.length) {
      frame[1]++;
      const child = fn.inputs[i]._gradFn;
      if (child && fn.needs[i] && !seen.has(child)) {
        seen.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(fn);
    }
  }

  const pending = new Map<GradFn, Tensor>([[top, rootGrad]]);
  try {
    for (let k = order.length - 1; k >= 0; k--) {
      const fn = order[k];
      const g = pending.get(fn);
      if (!g) continue;
      pending.delete(fn);
      if (!fn.backward) {
        throw new Error(
          `Tensor.backward: the graph through ${fn.name} was already released; ` +
            'backward() frees the graph, so run the forward pass again before another backward()',
        );
      }
      for (const [t, v] of fn.saved) {
        if (t._store.version !== v) {
          throw new Error(
            `Tensor.backward: a tensor of shape [${t.shape.join(', ')}] needed by ${fn.name} was modified in place ` +
              'after it was used (copy_, an optimiser step or a merge); run the forward pass again',
          );
        }
        t._live(`Tensor.backward (${fn.name})`);
      }
      const grads = fn.backward(g);
      for (const gi of grads) if (gi) hold(gi);
      grads.forEach((gi, i) => {
        if (!gi || !fn.needs[i]) {
          if (gi) drop(gi);
          return;
        }
        const input = fn.inputs[i];
        if (input._gradFn) {
          const prev = pending.get(input._gradFn);
          if (prev) {
            const sum = prev._make(native.binary(Bin.Add, prev._h, gi._h), prev.shape);
            hold(sum);
            drop(prev);
            drop(gi);
            pending.set(input._gradFn, sum);
          } else {
            pending.set(input._gradFn, gi);
          }
        } else if (input.requiresGrad) {
          accumulateLeaf(input, gi);
        } else {
          drop(gi);
        }
      });
      drop(g);
      releaseGradFn(fn);
    }
  } finally {
    // On error, free what is in flight and release the graph all the same.
    for (const t of pending.values()) drop(t);
    for (const fn of order) releaseGradFn(fn);
  }
}

// ====================================================================== ops

/** 'Tensor.mul' -> 'MulBackward', the name gradFn reports. */
function backwardName(where: string): string {
  const op = where.slice(where.indexOf('.') + 1);
  return `${op[0].toUpperCase()}${op.slice(1)}Backward`;
}

function binaryOp(where: string, a: Tensor, bIn: Tensor | number, op: Bin): Tensor {
  requireFloat(where, a);
  if (typeof bIn === 'number') {
    checkNumberOrNaN(where, 'other', bIn);
    // Scalars fold into one affine pass: alpha * a + beta.
    const [alpha, beta] =
      op === Bin.Add ? [1, bIn] : op === Bin.Sub ? [1, -bIn] : op === Bin.Mul ? [bIn, 0] : [1 / bIn, 0];
    const out = a._make(native.affine(a._h, alpha, beta), a.shape);
    return record(out, backwardName(where), [a], (g) =>
      [alpha === 1 ? g : g._make(native.affine(g._h, alpha, 0), g.shape)]);
  }
  assertTensor(where, 'other', bIn);
  const b = bIn;
  requireFloat(where, b, 'other');
  requireSame(where, a, 'this', b, 'other');
  const shape = broadcastShapes(where, a, b);
  const out = a._make(native.binary(op, a._h, b._h), shape);
  const name = backwardName(where);
  switch (op) {
    case Bin.Add:
      return record(out, name, [a, b], (g) => [sumToShape(g, a.shape), sumToShape(g, b.shape)]);
    case Bin.Sub:
      return record(out, name, [a, b], (g) => {
        const fn = out._gradFn as GradFn;
        const gb = fn.needs[1] ? sumToShape(g._make(native.affine(g._h, -1, 0), g.shape), b.shape) : null;
        return [fn.needs[0] ? sumToShape(g, a.shape) : null, gb];
      });
    case Bin.Mul:
      return record(out, name, [a, b], (g) => {
        const fn = out._gradFn as GradFn;
        const ga = fn.needs[0] ? reduceBinary(Bin.Mul, g, b, a.shape) : null;
        const gb = fn.needs[1] ? reduceBinary(Bin.Mul, g, a, b.shape) : null;
        return [ga, gb];
      }, [a, b]);
    default:
      return record(out, name, [a, b], (g) => {
        const fn = out._gradFn as GradFn;
        const ga = fn.needs[0] ? reduceBinary(Bin.Div, g, b, a.shape) : null;
        let gb: Tensor | null = null;
        if (fn.needs[1]) {
          // d(a/b)/db = -(a/b)/b: from the saved output, negated after the reduction.
          const q = out._make(native.binary(Bin.Div, out._h, b._h), shape);
          const r = reduceBinary(Bin.Mul, g, q, b.shape);
          q.dispose();
          gb = r._make(native.affine(r._h, -1, 0), r.shape);
          r.dispose();
        }
        return [ga, gb];
      }, [a, b, out]);
  }
}

/** (g op other) summed down to `to`: the gradient of one broadcast operand (other broadcasts to g). */
function reduceBinary(op: Bin, g: Tensor, other: Tensor, to: readonly number[]): Tensor {
  const p = g._make(native.binary(op, g._h, other._h), g.shape);
  const r = sumToShape(p, to);
  if (r !== p) p.dispose();
  return r;
}

function unaryOp(where: string, x: Tensor, op: Un): Tensor {
  requireFloat(where, x);
  const out = x._make(native.unary(op, x._h), x.shape);
  const name = backwardName(where);
  return record(out, name, [x], (g) => [g._make(native.unaryBackward(op, x._h, g._h), x.shape)], [x]);
}

function matmul(where: string, a: Tensor, b: Tensor): Tensor {
  assertTensor(where, 'this', a);
  assertTensor(where, 'other', b);
  requireFloat(where, a, 'this');
  requireFloat(where, b, 'other');
  requireSame(where, a, 'this', b, 'other');
  if (a.ndim === 0 || b.ndim === 0) throw rangeError(where, 'both operands', 'at least 1-D', a.ndim === 0 ? a : b);
  // Promote 1-D operands as torch does, and drop the added dim at the end.
  const a2 = a.ndim === 1 ? [1, a.shape[0]] : a.shape.slice();
  const b2 = b.ndim === 1 ? [b.shape[0], 1] : b.shape.slice();
  const [m, k] = a2.slice(-2);
  const [kb, n] = b2.slice(-2);
  if (k !== kb) {
    throw new RangeError(`${where}: shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be multiplied (${k} != ${kb})`);
  }
  const batchA = a2.slice(0, -2);
  const batchB = b2.slice(0, -2);
  const prod = (s: number[]) => s.reduce((x, y) => x * y, 1);
  let A3: number[];
  let B3: number[];
  let batch: number[];
  let expandA: number[] | null = null;
  let expandB: number[] | null = null;
  if (batchB.length === 0) {
    // [..., m, k] @ [k, n]: one GEMM over all rows.
    batch = batchA;
    A3 = [1, prod(batchA) * m, k];
    B3 = [1, k, n];
  } else {
    const r = Math.max(batchA.length, batchB.length);
    batch = [];
    for (let i = 0; i < r; i++) {
      const da = i < r - batchA.length ? 1 : batchA[i - (r - batchA.length)];
      const db = i < r - batchB.length ? 1 : batchB[i - (r - batchB.length)];
      if (da !== db && da !== 1 && db !== 1) {
        throw new RangeError(`${where}: batch dims of [${a.shape.join(', ')}] and [${b.shape.join(', ')}] cannot be broadcast`);
      }
      batch.push(da === 1 ? db : da);
    }
    const nb = prod(batch);
    if (prod(batchA) !== nb && prod(batchA) !== 1) expandA = [...batch, m, k];
    if (prod(batchB) !== nb && prod(batchB) !== 1) expandB = [...batch, k, n];
    A3 = [prod(batchA) === 1 ? 1 : nb, m, k];
    B3 = [prod(batchB) === 1 ? 1 : nb, k, n];
  }
  const finalShape = [...batch, m, n];
  if (a.ndim === 1) finalShape.splice(finalShape.length - 2, 1);
  if (b.ndim === 1) finalShape.splice(finalShape.length - 1, 1);

  const hA = expandA ? native.expand(native.view(a._h, a2), expandA) : a._h;
  const hB = expandB ? native.expand(native.view(b._h, b2), expandB) : b._h;
  const vA = native.view(hA, A3);
  const vB = native.view(hB, B3);
  const out3 = native.bmm(vA, vB, false, false);
  const out = a._make(native.view(out3, finalShape), finalShape);
  const release = () => {
    if (expandA) native.dispose(hA);
    if (expandB) native.dispose(hB);
  };
  const out3Shape = [batchB.length === 0 ? 1 : prod(batch), A3[1], n];
  return record(out, 'MatmulBackward', [a, b], (g) => {
    const fn = out._gradFn as GradFn;
    const g3 = native.view(g._h, out3Shape);
    // Gradients in the 3-D frame, then summed over broadcast batch dims and
    // reshaped back to the operands' own shapes.
    const back = (d: NativeTensor, full: number[], to: number[], orig: readonly number[]) => {
      const t = g._make(native.view(d, full), full);
      const r = sumToShape(t, to);
      if (r !== t) t.dispose();
      return viewOf(r, orig);
    };
    const ga = fn.needs[0]
      ? back(native.bmm(g3, vB, false, true), batchB.length === 0 ? a2 : [...batch, m, k], a2, a.shape)
      : null;
    const gb = fn.needs[1]
      ? back(native.bmm(vA, g3, true, false), batchB.length === 0 ? [k, n] : [...batch, k, n], b2, b.shape)
      : null;
    return [ga, gb];
  }, [a, b], release);
}

// ================================================================= creation

function inferDataShape(where: string, data: unknown): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    if (cur.length === 0) break;
    cur = cur[0];
  }
  return shape;
}

function flatten(where: string, data: unknown, shape: number[], dtype: DType): Float32Array | Float64Array | Int32Array {
  const total = shape.reduce((a, b) => a * b, 1);
  const out = new ARRAY_OF[dtype](total);
  let pos = 0;
  const walk = (v: unknown, dim: number, path: string) => {
    if (dim === shape.length) {
      if (typeof v !== 'number') throw typeError(where, `data${path}`, 'a number', v);
      if (dtype === 'int32' && !Number.isInteger(v)) throw rangeError(where, `data${path}`, 'an integer (int32 tensor)', v);
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

/** @internal */
export function toTypedArray(where: string, what: string, data: ArrayLike<number>, dtype: DType): Float32Array | Float64Array | Int32Array {
  if (data instanceof ARRAY_OF[dtype]) return data as Float32Array | Float64Array | Int32Array;
  if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number') {
    throw typeError(where, what, 'an array of numbers or a typed array', data);
  }
  const out = new ARRAY_OF[dtype](data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (typeof v !== 'number' && typeof v !== 'bigint') throw typeError(where, `${what}[${i}]`, 'a number', v);
    if (dtype === 'int32' && !Number.isInteger(Number(v))) throw rangeError(where, `${what}[${i}]`, 'an integer (int32 tensor)', v);
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
  let flat: Float32Array | Float64Array | Int32Array;
  let shape: number[];
  if (typeof data === 'number') {
    flat = toTypedArray(where, 'data', [data], dtype);
    shape = [];
  } else if (Array.isArray(data) && o.shape === undefined) {
    shape = inferDataShape(where, data);
    flat = flatten(where, data, shape, dtype);
  } else if (data !== null && typeof data === 'object' && typeof (data as ArrayLike<number>).length === 'number') {
    const src = Array.isArray(data) && data.some((v) => Array.isArray(v)) ? null : (data as ArrayLike<number>);
    if (!src) throw typeError(where, 'data', 'a flat array when options.shape is given', data);
    flat = toTypedArray(where, 'data', src, dtype);
    shape = o.shape === undefined ? [flat.length] : checkShape(where, 'options.shape', o.shape);
  } else {
    throw typeError(where, 'data', 'a number, an array of numbers, nested arrays or a typed array', data);
  }
  const numel = shape.reduce((a, b) => a * b, 1);
  if (flat.length !== numel) {
    throw rangeError(where, 'data length', `${numel} to match shape [${shape.join(', ')}]`, flat.length);
  }
  const h = native.fromArray(flat, shape, DTYPE_CODE[dtype], device.type, device.index);
  const t = new Tensor(h, shape, dtype, device);
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
  return finish(new Tensor(native.full(s, DTYPE_CODE[dtype], device.type, device.index, value), s, dtype, device), requiresGrad);
}
export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled('zeros', shape, 0, opts);
}
export function ones(shape: readonly number[], opts?: TensorOptions): Tensor {
  return filled('ones', shape, 1, opts);
}

function randomTensor(where: string, shape: readonly number[], opts: unknown, kind: 0 | 1, a: number, b: number, extra: string[]): Tensor {
  const s = checkShape(where, 'shape', shape);
  const { dtype, device, requiresGrad } = readOptions(where, opts, extra);
  if (dtype === 'int32') throw rangeError(where, 'options.dtype', 'float32 or float64', dtype);
  const { seed, offset } = nextRandomKey();
  const h = native.random(s, DTYPE_CODE[dtype], device.type, device.index, kind, seed, offset, a, b);
  return finish(new Tensor(h, s, dtype, device), requiresGrad);
}

/** Normal samples, N(mean, std²) (default N(0, 1)), from the global generator. */
export function randn(shape: readonly number[], opts?: TensorOptions & { mean?: number; std?: number }): Tensor {
  const o = checkOptions('randn', opts);
  const mean = o.mean === undefined ? 0 : checkNumber('randn', 'options.mean', o.mean);
  const std = o.std === undefined ? 1 : checkNumber('randn', 'options.std', o.std);
  if (std < 0) throw rangeError('randn', 'options.std', 'a number >= 0', std);
  return randomTensor('randn', shape, opts, 0, mean, std, ['mean', 'std']);
}

/** Uniform samples in [low, high) (default [0, 1)), from the global generator. */
export function rand(shape: readonly number[], opts?: TensorOptions & { low?: number; high?: number }): Tensor {
  const o = checkOptions('rand', opts);
  const low = o.low === undefined ? 0 : checkNumber('rand', 'options.low', o.low);
  const high = o.high === undefined ? 1 : checkNumber('rand', 'options.high', o.high);
  if (!(high >= low)) throw rangeError('rand', 'options.high', `>= options.low (${low})`, high);
  return randomTensor('rand', shape, opts, 1, low, high, ['low', 'high']);
}

