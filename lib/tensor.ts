// Tensor: a handle to native storage plus shape, dtype and device, with
// reverse-mode autograd (autograd.ts). Methods check their arguments, then call
// the ops (lib/ops), which record a graph node when an input needs a gradient.
import type { NativeTensor } from './native';
import { DType, DTYPES } from './dtype';
import { Node, runBackward } from './autograd';
import { DeviceSpec, ParsedDevice, isDeviceName, parseDevice } from './device';
import { track } from './scope';
import {
  assertTensor, broadcastShapes, checkInt32Value, checkNumberOrNaN, inferShape, matmulPlan, normalizeDim, normalizeDims,
  requireFloat, requireSame, requireSameDevice,
} from './checks';
import { toTypedArray } from './creation';
import { checkBool, checkInt, checkKnownKeys, checkOneOf, checkOptions, rangeError, typeError } from './errors';
import { sameShape } from './shape';
import { tensorRepr } from './printing';
import * as memory from './ops/memory';
import * as creation from './ops/creation';
import * as elementwise from './ops/elementwise';
import * as shapeOps from './ops/shape';
import { matmul } from './ops/linear';
import * as views from './views';
import type { BinaryOp, UnaryOp } from './ops/enums';
import * as select from './ops/select';
import type { CompareOp } from './ops/enums';
import type { ValuesIndices } from './ops/select';

export type { DType } from './dtype';
export type { ValuesIndices } from './ops/select';

/** State shared by a tensor and its views (reshape, detach): one storage. */
export interface Store {
  version: number; // bumped by in-place writes, so stale saved tensors are caught
  disposed: boolean;
  escaped?: boolean; // held by something long-lived (a .grad, optimiser state): tidy() never frees it
  saves?: number; // recorded nodes that kept it for backward (saveForBackward)
  freeWhenUnsaved?: boolean; // releaseIntermediate() was called while saved: freed when the last such node goes
  // The values of an int32 GPU tensor as they were uploaded, valid while `version` is unchanged:
  // the ops that must check ids on the host (embedding, cross-entropy) read them without waiting
  // for the device.
  hostInts?: { version: number; values: Int32Array };
}

// Host copies of int32 GPU tensors are kept up to this many elements (ids, targets).
const HOST_INTS_MAX = 1 << 22;

export type NestedList = (number | NestedList)[];

/** Options of Tensor.backward. */
export interface BackwardOptions {
  /** Keep the graph for another backward() through it (torch's retain_graph); default false. */
  retainGraph?: boolean;
}

export class Tensor {
  /** @internal The native handle; only lib/ops reads it. */ _h: NativeTensor;
  /** @internal */ _store: Store;
  /** @internal */ _gradFn: Node | null = null;
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
      track(this);
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
    this._checkRequiresGrad('Tensor.requiresGrad', flag);
    this._requiresGrad = flag;
    return this;
  }

  /**
   * @internal Throws unless requiresGrad can be set to flag (a leaf; a float dtype to require grad);
   * `name` says which tensor for a caller setting many (Module.requiresGrad_).
   */
  _checkRequiresGrad(where: string, flag: boolean, name?: string): void {
    if (this._gradFn) {
      throw new Error(`${where}: only leaf tensors can change requiresGrad${name ? ` (${name} is not one)` : ''}; use detach() for a non-leaf`);
    }
    if (flag && this._dtype === 'int32') {
      throw rangeError(where, name ? `the dtype of ${name}` : 'dtype', 'a float dtype (float32, float64, bfloat16 or float16) for a tensor that requires grad', this._dtype);
    }
  }

  /** @internal Makes this the output of a recorded op (it then requires grad). */
  _setGradFn(node: Node): void {
    this._gradFn = node;
    this._requiresGrad = true;
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
  /**
   * The values as torch prints a tensor: tensor([[1., 2.], ...]) with device, dtype (unless
   * float32), grad_fn or requires_grad; summarised past 1000 elements. util.inspect and
   * console.log print the same; a disposed tensor prints as describe().
   */
  toString(): string {
    if (this._store.disposed) return this.describe();
    return tensorRepr({ data: memory.toArray(this), shape: this._shape, dtype: this._dtype, device: this.device,
      requiresGrad: this._requiresGrad, gradFn: this.gradFn });
  }
  /** @internal What console.log and util.inspect show: toString(), never the handles. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }

  /** @internal Throws (code ERR_TENSOR_DISPOSED) once disposed; `what` names the tensor for the caller's user. */
  _checkLive(where: string, what = 'tensor'): void {
    if (this._store.disposed) {
      const e = new Error(`${where}: ${what} has been disposed`);
      (e as NodeJS.ErrnoException).code = 'ERR_TENSOR_DISPOSED';
      throw e;
    }
  }

  /** @internal A new tensor with its own storage on this one's device, from a handle an op made. */
  _make(h: NativeTensor, shape: readonly number[], dtype: DType = this._dtype): Tensor {
    return new Tensor(h, shape, dtype, this._device);
  }

  /** @internal A new view of this one's storage (same version counter), from a handle an op made. */
  _share(h: NativeTensor, shape: readonly number[]): Tensor {
    return new Tensor(h, shape, this._dtype, this._device, this._store);
  }

  // ---------------------------------------------------------------- data out

  /** A flat, row-major copy of the data (Float32Array, Float64Array or Int32Array). */
  toArray(): Float32Array | Float64Array | Int32Array {
    this._checkLive('Tensor.toArray');
    return memory.toArray(this);
  }

  /**
   * @internal The values of an int32 tensor for host-side checks, from the host copy kept since the
   * last write when there is one (no wait for the device), else read back. Callers must not modify it.
   */
  _int32Values(where: string): Int32Array {
    this._checkLive(where);
    const c = this._store.hostInts;
    if (c && c.version === this._store.version) return c.values;
    return memory.toArray(this) as Int32Array;
  }

  /** @internal Keeps `values` (what this int32 GPU tensor now holds) as its host copy. */
  _keepHostInts(values: Int32Array, copy: boolean): void {
    if (this._dtype !== 'int32' || this._device.type === 'cpu' || values.length > HOST_INTS_MAX) return;
    this._store.hostInts = { version: this._store.version, values: copy ? values.slice() : values };
  }

  /** The data as nested arrays of numbers (a number for a 0-d tensor). */
  tolist(): number | NestedList {
    this._checkLive('Tensor.tolist');
    const flat = memory.toArray(this);
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
    this._checkLive('Tensor.item');
    if (this.numel !== 1) {
      throw rangeError('Tensor.item', 'the tensor', 'a tensor with exactly one element', this);
    }
    return memory.toArray(this)[0];
  }

  // ------------------------------------------------------------ memory, copy

  /**
   * Frees the native memory now (the garbage collector would do it later).
   * Views sharing the storage become unusable too; idempotent.
   */
  dispose(): void {
    if (this._store.disposed) return;
    memory.disposeStorage(this);
    this._store.disposed = true;
    if (this._grad) this._grad.dispose();
    this._grad = null;
    if (this._gradFn) this._gradFn.release(true);
    this._gradFn = null;
  }

  /** A tensor sharing this one's data, cut from the graph (requiresGrad false). */
  detach(): Tensor {
    this._checkLive('Tensor.detach');
    return shapeOps.detach(this);
  }

  /** A copy with its own storage (differentiable; an int32 tensor is copied without a graph). */
  clone(): Tensor {
    this._checkLive('Tensor.clone');
    return shapeOps.clone(this);
  }

  /**
   * Copies src into this tensor in place, outside autograd. src is a tensor with
   * the same number of elements (any dtype or device) or an array-like of numbers.
   */
  copy_(src: Tensor | ArrayLike<number>): this {
    const where = 'Tensor.copy_';
    this._checkLive(where);
    if (src instanceof Tensor) {
      if (src.numel !== this.numel) {
        throw rangeError(where, 'src', `a tensor with ${this.numel} elements (shape [${this._shape.join(', ')}])`, src);
      }
      src._checkLive(where);
      memory.copy_(this, src);
    } else {
      const arr = toTypedArray(where, 'src', src, this._dtype);
      if (arr.length !== this.numel) {
        throw rangeError(where, 'src.length', `${this.numel} (the tensor's numel)`, arr.length);
      }
      creation.copyFromArray_(this, arr);
      this._store.version++;
      this._keepHostInts(arr as Int32Array, arr === src);
      return this;
    }
    this._store.version++;
    return this;
  }

  /** Fills with zeros in place, outside autograd. */
  zero_(): this {
    return fill(this, 'Tensor.zero_', 0);
  }

  /** Fills with value in place, outside autograd. */
  fill_(value: number): this {
    return fill(this, 'Tensor.fill_', value);
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
    this._checkLive(where);
    if (typeof target === 'string' && (DTYPES as readonly string[]).includes(target)) {
      return moveTo(this, this._device, target as DType);
    }
    // undefined, as parseDevice takes it, is the CPU.
    if (target !== undefined && !isDeviceName(target)) {
      throw (typeof target === 'string' ? rangeError : typeError)(where, 'target', TO_TARGETS, target);
    }
    return moveTo(this, parseDevice(where, 'device', target), this._dtype);
  }
  cpu(): Tensor {
    const where = 'Tensor.cpu';
    this._checkLive(where);
    return moveTo(this, parseDevice(where, 'device', 'cpu'), this._dtype);
  }
  cuda(index = 0): Tensor {
    const where = 'Tensor.cuda';
    checkInt(where, 'index', index);
    this._checkLive(where);
    return moveTo(this, parseDevice(where, 'device', `cuda:${index}`), this._dtype);
  }

  // -------------------------------------------------------------- autograd

  /**
   * Computes gradients of this tensor with respect to every leaf that requires
   * grad, accumulating them into .grad. A non-scalar needs `grad` (dL/dthis).
   * The graph is released afterwards, unless options.retainGraph is true (as
   * torch's retain_graph): then it can be backpropagated through again, the
   * gradients adding up. Call as backward(), backward(grad), backward(options)
   * or backward(grad, options).
   */
  backward(grad?: Tensor | BackwardOptions, options?: BackwardOptions): void {
    const where = 'Tensor.backward';
    if (grad !== undefined && !(grad instanceof Tensor) && grad !== null && typeof grad === 'object' && options === undefined) {
      options = grad as BackwardOptions;
      grad = undefined;
    }
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['retainGraph']);
    const retainGraph = o.retainGraph === undefined ? false : checkBool(where, 'options.retainGraph', o.retainGraph);
    this._checkLive(where);
    if (!this._requiresGrad) {
      throw new Error(`${where}: this tensor does not require grad and has no graph (did every input have requiresGrad false, or was it made inside noGrad?)`);
    }
    let g: Tensor;
    let userGrad = false;
    if (grad === undefined) {
      if (this.numel !== 1) {
        throw rangeError(where, 'grad', `given for a non-scalar output (shape [${this._shape.join(', ')}])`, undefined);
      }
      g = creation.onesLike(this);
    } else {
      assertTensor(where, 'grad', grad);
      if (!sameShape(grad._shape, this._shape) || grad._dtype !== this._dtype || grad.device !== this.device) {
        throw rangeError(where, 'grad', `a ${this._dtype} tensor of shape [${this._shape.join(', ')}] on ${this.device}`, grad);
      }
      grad._checkLive(where);
      g = grad;
      userGrad = true;
    }
    runBackward(this, g, userGrad, retainGraph);
  }

  // ------------------------------------------------------------ elementwise

  /** this + other, broadcasting. */
  add(other: Tensor | number): Tensor {
    return binaryOp('Tensor.add', this, other, 'add');
  }
  /** this - other, broadcasting. */
  sub(other: Tensor | number): Tensor {
    return binaryOp('Tensor.sub', this, other, 'sub');
  }
  /** this * other (elementwise), broadcasting. */
  mul(other: Tensor | number): Tensor {
    return binaryOp('Tensor.mul', this, other, 'mul');
  }
  /** this / other (elementwise), broadcasting. */
  div(other: Tensor | number): Tensor {
    return binaryOp('Tensor.div', this, other, 'div');
  }
  neg(): Tensor {
    return unaryOp('Tensor.neg', this, 'neg');
  }
  relu(): Tensor {
    return unaryOp('Tensor.relu', this, 'relu');
  }
  /** GELU; approximate 'none' uses erf (torch's default), 'tanh' the tanh formula. */
  gelu(approximate: 'none' | 'tanh' = 'none'): Tensor {
    checkOneOf('Tensor.gelu', 'approximate', approximate, ['none', 'tanh'] as const);
    return unaryOp('Tensor.gelu', this, approximate === 'tanh' ? 'geluTanh' : 'gelu');
  }
  silu(): Tensor {
    return unaryOp('Tensor.silu', this, 'silu');
  }
  exp(): Tensor {
    return unaryOp('Tensor.exp', this, 'exp');
  }
  log(): Tensor {
    return unaryOp('Tensor.log', this, 'log');
  }
  sqrt(): Tensor {
    return unaryOp('Tensor.sqrt', this, 'sqrt');
  }
  /** |x|; its gradient is sign(x), 0 at 0 (as torch). */
  abs(): Tensor {
    return unaryOp('Tensor.abs', this, 'abs');
  }

  /** Softmax along dim (default the last), computed stably (max-subtracted). */
  softmax(dim = -1): Tensor {
    const where = 'Tensor.softmax';
    requireFloat(where, this);
    if (this.ndim === 0) throw rangeError(where, 'the tensor', 'at least 1-D', this);
    const d = normalizeDim(where, 'dim', dim, this.ndim);
    if (d !== this.ndim - 1) return this.transpose(d, -1).softmax(-1).transpose(d, -1);
    return elementwise.softmax(this);
  }

  // -------------------------------------------------------------- reductions

  /** Sum over all elements, or over dim(s) (negative dims count from the end). */
  sum(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.sum';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
    return elementwise.sum(this, dims, keepdim);
  }

  /** Mean over all elements, or over dim(s). */
  mean(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.mean';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
    const count = dims.reduce((n, i) => n * this._shape[i], 1);
    return elementwise.scalar('mul', elementwise.sum(this, dims, keepdim), 1 / count);
  }

  // ------------------------------------------- selection, masks, pointwise extras

  /**
   * The max over all elements (0-d; the gradient is shared by the elements equal to it, as
   * torch), or along dim: { values, indices } (int32, the first index of the max; torch's int64).
   */
  max(): Tensor;
  max(dim: number, keepdim?: boolean): ValuesIndices;
  max(dim?: number, keepdim = false): Tensor | ValuesIndices {
    return minmax('Tensor.max', 'max', this, dim, keepdim);
  }
  /** The min over all elements, or along dim: { values, indices }, as max. */
  min(): Tensor;
  min(dim: number, keepdim?: boolean): ValuesIndices;
  min(dim?: number, keepdim = false): Tensor | ValuesIndices {
    return minmax('Tensor.min', 'min', this, dim, keepdim);
  }
  /** int32 index of the max: of the flattened tensor (0-d) without dim, else along dim. Ties: the first. */
  argmax(dim?: number | null, keepdim = false): Tensor {
    return argMinMax('Tensor.argmax', 'max', this, dim, keepdim);
  }
  /** int32 index of the min, as argmax. */
  argmin(dim?: number | null, keepdim = false): Tensor {
    return argMinMax('Tensor.argmin', 'min', this, dim, keepdim);
  }
  /** The k largest (or smallest) elements along dim (default the last), sorted: { values, indices (int32) }. */
  topk(k: number, dim = -1, largest = true, sorted = true): ValuesIndices {
    const where = 'Tensor.topk';
    requireFloat(where, this);
    const d = normalizeDim(where, 'dim', dim, this.ndim);
    const n = this.ndim === 0 ? 1 : this.shape[d];
    if (typeof k !== 'number' || !Number.isInteger(k)) throw typeError(where, 'k', 'an integer', k);
    if (k < 0 || k > n) throw rangeError(where, 'k', `in [0, ${n}] (the size of dim ${d})`, k);
    if (typeof largest !== 'boolean') throw typeError(where, 'largest', 'a boolean', largest);
    if (typeof sorted !== 'boolean') throw typeError(where, 'sorted', 'a boolean', sorted);
    // Always sorted: an order torch leaves unspecified with sorted false.
    if (this.ndim === 0) {
      // A 0-d tensor has one element: k 1 gives 0-d results, k 0 empty ones (as torch).
      const r = select.topk(shapeOps.reshape(this, [1]), k, 0, largest);
      return k === 1 ? { values: shapeOps.reshape(r.values, []), indices: r.indices.reshape([]) } : r;
    }
    return select.topk(this, k, d, largest);
  }
  /** Prefix sums along dim. */
  cumsum(dim: number): Tensor {
    const where = 'Tensor.cumsum';
    requireFloat(where, this);
    const d = normalizeDim(where, 'dim', dim, this.ndim);
    if (this.ndim === 0) return shapeOps.reshape(select.cumsum(shapeOps.reshape(this, [1]), 0), []);
    return select.cumsum(this, d);
  }
  sigmoid(): Tensor {
    return unaryOp('Tensor.sigmoid', this, 'sigmoid');
  }
  tanh(): Tensor {
    return unaryOp('Tensor.tanh', this, 'tanh');
  }
  /**
   * this ^ exponent (a number, or a tensor broadcasting with this). Gradients as torch: none to
   * the base where the exponent is 0, none to the exponent where the base is 0 and exponent >= 0.
   */
  pow(exponent: Tensor | number): Tensor {
    const where = 'Tensor.pow';
    requireFloat(where, this);
    if (typeof exponent === 'number') {
      checkNumberOrNaN(where, 'exponent', exponent);
      const e = select.scalarLike(this, exponent);
      const out = select.pow(this, e, this._shape);
      if (!out.requiresGrad) e.dispose(); // else the graph keeps it until it is released
      return out;
    }
    assertTensor(where, 'exponent', exponent);
    requireFloat(where, exponent, 'exponent');
    requireSame(where, this, 'this', exponent, 'exponent');
    return select.pow(this, exponent, broadcastShapes(where, this, exponent));
  }
  /**
   * Elementwise into [min, max] (either may be null or omitted, not both); the gradient is 1
   * inside, the bounds included (as torch), 0 outside. With min > max every element is max.
   */
  clamp(min?: number | null, max?: number | null): Tensor {
    const where = 'Tensor.clamp';
    requireFloat(where, this);
    const lo = min ?? null;
    const hi = max ?? null;
    if (lo === null && hi === null) throw typeError(where, 'min or max', 'a number (at least one of them)', max);
    if (lo !== null && (typeof lo !== 'number' || Number.isNaN(lo))) throw typeError(where, 'min', 'a number (not NaN) or null', min);
    if (hi !== null && (typeof hi !== 'number' || Number.isNaN(hi))) throw typeError(where, 'max', 'a number (not NaN) or null', max);
    return select.clamp(this, lo ?? -Infinity, hi ?? Infinity);
  }
  /** this == other as an int32 mask (1 where true, 0 where false; torch gives bool), broadcasting. */
  eq(other: Tensor | number): Tensor {
    return compareOp('Tensor.eq', this, other, 'eq');
  }
  /** this != other as an int32 mask. */
  ne(other: Tensor | number): Tensor {
    return compareOp('Tensor.ne', this, other, 'ne');
  }
  /** this < other as an int32 mask. */
  lt(other: Tensor | number): Tensor {
    return compareOp('Tensor.lt', this, other, 'lt');
  }
  /** this <= other as an int32 mask. */
  le(other: Tensor | number): Tensor {
    return compareOp('Tensor.le', this, other, 'le');
  }
  /** this > other as an int32 mask. */
  gt(other: Tensor | number): Tensor {
    return compareOp('Tensor.gt', this, other, 'gt');
  }
  /** this >= other as an int32 mask. */
  ge(other: Tensor | number): Tensor {
    return compareOp('Tensor.ge', this, other, 'ge');
  }
  /** Where condition (an int32 mask, nonzero true) holds, this, else other; broadcasting (torch's Tensor.where). */
  where(condition: Tensor, other: Tensor | number): Tensor {
    return whereOp('Tensor.where', condition, this, other);
  }
  /** A copy with value where mask (int32, nonzero true, broadcasting to this shape) holds. */
  maskedFill(mask: Tensor, value: number): Tensor {
    const where = 'Tensor.maskedFill';
    this._checkLive(where);
    assertTensor(where, 'mask', mask);
    checkMask(where, 'mask', mask, this);
    checkNumberOrNaN(where, 'value', value);
    if (this._dtype === 'int32') checkInt32Value(where, 'value', value);
    const shape = broadcastShapes(where, mask, this);
    if (!sameShape(shape, this.shape)) {
      throw rangeError(where, 'mask', `broadcastable to the tensor's shape [${this.shape.join(', ')}]`, mask);
    }
    const v = select.scalarLike(this, value);
    const out = select.where(mask, v, this, shape);
    if (!out.requiresGrad) v.dispose();
    return out;
  }
  /** Log-softmax along dim (default the last), computed stably (max-subtracted). */
  logSoftmax(dim = -1): Tensor {
    return logSoftmaxOp('Tensor.logSoftmax', this, dim);
  }

  // ------------------------------------------------------------------ shape

  /** Same data, new shape (one dim may be -1). Shares storage with this tensor. */
  reshape(...shape: number[] | [readonly number[]]): Tensor {
    return reshape('Tensor.reshape', this, shape);
  }
  /** Alias of reshape (all tensors are contiguous). */
  view(...shape: number[] | [readonly number[]]): Tensor {
    return reshape('Tensor.view', this, shape);
  }

  /** Reorders dims (copies the data). */
  permute(...dims: number[] | [readonly number[]]): Tensor {
    const where = 'Tensor.permute';
    const perm = ((Array.isArray(dims[0]) ? dims[0] : dims) as readonly number[]).slice();
    if (perm.length !== this.ndim) throw rangeError(where, 'dims', `a permutation of ${this.ndim} dims`, perm);
    const norm = perm.map((d, i) => normalizeDim(where, `dims[${i}]`, d, this.ndim));
    if (new Set(norm).size !== norm.length) throw rangeError(where, 'dims', 'a permutation (no repeats)', perm);
    this._checkLive(where);
    return shapeOps.permute(this, norm);
  }

  /** Swaps two dims (copies the data). */
  transpose(dim0: number, dim1: number): Tensor {
    const where = 'Tensor.transpose';
    return swapDims(where, this, normalizeDim(where, 'dim0', dim0, this.ndim), normalizeDim(where, 'dim1', dim1, this.ndim));
  }
  /** Transpose of a 2-D tensor. */
  t(): Tensor {
    if (this.ndim !== 2) throw rangeError('Tensor.t', 'the tensor', 'a 2-D tensor', this);
    return swapDims('Tensor.t', this, 0, 1);
  }

  // ------------------------------------------------ slicing and joining (lib/views.ts)
  // Copies, not views: an in-place write to the result does not reach this tensor (see README).

  /** length elements from start along dim (start may be negative), as torch.narrow. */
  narrow(dim: number, start: number, length: number): Tensor {
    return views.narrow(this, dim, start, length);
  }
  /** Python's x[start:end:step] along dim: negative or null bounds, clamped; step > 0. */
  slice(dim: number, start?: number | null, end?: number | null, step?: number): Tensor {
    return views.slice(this, dim, start, end, step);
  }
  /** The slice at index along dim, without that dim (x[:, i] for dim 1). */
  select(dim: number, index: number): Tensor {
    return views.select(this, dim, index);
  }
  /** Entries along dim at the int32 indices of a 1-D index, in its order (torch.index_select). */
  indexSelect(dim: number, index: Tensor): Tensor {
    return views.indexSelect(this, dim, index);
  }
  /** torch.gather: along dim, each element from where an int32 index of the same rank says. */
  gather(dim: number, index: Tensor): Tensor {
    return views.gather(this, dim, index);
  }
  /** Pieces along dim: of splitSize each (the last may be smaller), or of the listed sizes. */
  split(splitSize: number | readonly number[], dim = 0): Tensor[] {
    return views.split(this, splitSize, dim);
  }
  /** At most `chunks` pieces of ceil(size / chunks) along dim, as torch.chunk. */
  chunk(chunks: number, dim = 0): Tensor[] {
    return views.chunk(this, chunks, dim);
  }
  /** A size-1 dim inserted at dim. Shares storage (as reshape). */
  unsqueeze(dim: number): Tensor {
    return views.unsqueeze(this, dim);
  }
  /** Size-1 dims removed: all, or those of dim. Shares storage (as reshape). */
  squeeze(dim?: number | readonly number[]): Tensor {
    return views.squeeze(this, dim);
  }
  /** Dims startDim..endDim merged into one. Shares storage (as reshape). */
  flatten(startDim = 0, endDim = -1): Tensor {
    return views.flatten(this, startDim, endDim);
  }
  /** Broadcast to sizes (-1 keeps a dim; new dims in front); the gradient sums back. */
  expand(...sizes: number[] | [readonly number[]]): Tensor {
    return views.expand(this, sizes);
  }
  /** This tensor: every tensor here is contiguous. */
  contiguous(): Tensor {
    this._checkLive('Tensor.contiguous');
    return this;
  }
  /** The lower triangle of the last two dims (elements with col - row <= diagonal), others 0. */
  tril(diagonal = 0): Tensor {
    return views.triangle('Tensor.tril', this, diagonal, false);
  }
  /** The upper triangle of the last two dims (elements with col - row >= diagonal), others 0. */
  triu(diagonal = 0): Tensor {
    return views.triangle('Tensor.triu', this, diagonal, true);
  }

  // ----------------------------------------------------------------- matmul

  /** Matrix product with torch.matmul's rules (1-D, 2-D and broadcast batches). */
  matmul(other: Tensor): Tensor {
    const where = 'Tensor.matmul';
    assertTensor(where, 'other', other);
    requireFloat(where, this, 'this');
    requireFloat(where, other, 'other');
    requireSame(where, this, 'this', other, 'other');
    return matmul(this, other, matmulPlan(where, this, other));
  }
}

// Shared bodies of methods that are also reached through another public name (view and reshape,
// t and transpose, to, cpu and cuda): each error names the method the user called.

/** fill_ and zero_: value into every element, in place. */
function fill<T extends Tensor>(t: T, where: string, value: number): T {
  checkNumberOrNaN(where, 'value', value);
  if (t.dtype === 'int32') checkInt32Value(where, 'value', value);
  t._checkLive(where);
  creation.fill_(t, value);
  t._bumpVersion();
  return t;
}

/** The same data with another shape, given as varargs or one array. */
function reshape(where: string, t: Tensor, shape: number[] | [readonly number[]]): Tensor {
  const want = (Array.isArray(shape[0]) ? shape[0] : shape) as readonly number[];
  const target = inferShape(where, want, t.numel, t.shape);
  t._checkLive(where);
  return shapeOps.reshape(t, target);
}

/** t with dims a and b (normalised) swapped; a 0-d tensor (dims 0 and -1 both name it) is copied as it is. */
function swapDims(where: string, t: Tensor, a: number, b: number): Tensor {
  t._checkLive(where);
  const perm = t.shape.map((_, i) => i);
  if (t.ndim > 0) {
    perm[a] = b;
    perm[b] = a;
  }
  return shapeOps.permute(t, perm);
}

/** What Tensor.to takes. */
const TO_TARGETS = `a device ('cpu', 'cuda' or 'cuda:N') or a dtype (${DTYPES.slice(0, -1).map((d) => `'${d}'`).join(', ')} or '${DTYPES[DTYPES.length - 1]}')`;

/** t (live) on `device` in `dtype`: t itself when nothing changes. */
function moveTo(t: Tensor, device: ParsedDevice, dtype: DType): Tensor {
  if (device.name === t._device.name && dtype === t.dtype) return t;
  return creation.to(t, device, dtype);
}

// ---- bodies of the selection, mask and pointwise methods (F reaches some of them too)

function minmax(where: string, op: 'max' | 'min', t: Tensor, dim: number | undefined, keepdim: boolean): Tensor | ValuesIndices {
  requireFloat(where, t);
  if (dim === undefined) {
    if (t.numel === 0) throw rangeError(where, 'the tensor', 'non-empty (the max and min of nothing are undefined)', t);
    return select.minmaxAll(op, t);
  }
  const d = normalizeDim(where, 'dim', dim, t.ndim);
  if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
  if (t.ndim === 0) {
    const r = select.minmaxDim(op, shapeOps.reshape(t, [1]), 0, false);
    return { values: r.values, indices: r.indices };
  }
  if (t.shape[d] === 0) throw rangeError(where, `dim ${d}`, 'non-empty to reduce over', t);
  return select.minmaxDim(op, t, d, keepdim);
}

function argMinMax(where: string, op: 'max' | 'min', t: Tensor, dim: number | null | undefined, keepdim: boolean): Tensor {
  requireFloat(where, t);
  if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
  if (dim === undefined || dim === null) {
    if (t.numel === 0) throw rangeError(where, 'the tensor', 'non-empty', t);
    return select.argMinMax(op, t, null, keepdim);
  }
  const d = normalizeDim(where, 'dim', dim, t.ndim);
  if (t.ndim === 0) return select.argMinMax(op, t, null, false);
  if (t.shape[d] === 0) throw rangeError(where, `dim ${d}`, 'non-empty to reduce over', t);
  return select.argMinMax(op, t, d, keepdim);
}

/** The broadcast of two shapes, refused as broadcastShapes refuses. */
function broadcastPair(where: string, a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = i < r - a.length ? 1 : a[i - (r - a.length)];
    const db = i < r - b.length ? 1 : b[i - (r - b.length)];
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${where}: shapes [${a.join(', ')}] and [${b.join(', ')}] cannot be broadcast together (dim ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** An int32 mask on t's device. */
function checkMask(where: string, what: string, mask: Tensor, t: Tensor): void {
  mask._checkLive(where, what);
  if (mask.dtype !== 'int32') throw typeError(where, `${what}'s dtype`, 'int32 (a mask of 0 and 1, as the comparisons give)', mask.dtype);
  requireSameDevice(where, mask, what, t, 'the tensor');
}

/** t itself, or a number as a 0-d tensor of t's dtype (float64 for a fraction against an int32 tensor). */
function compareOp(where: string, t: Tensor, other: Tensor | number, op: CompareOp): Tensor {
  t._checkLive(where);
  if (typeof other === 'number') {
    if (t.dtype === 'int32' && !(Number.isInteger(other) && other > -2147483649 && other < 2147483648)) {
      // torch promotes to a float type: compare the values exactly in float64.
      const t64 = creation.to(t, t._device, 'float64');
      const r = compareOp(where, t64, other, op);
      t64.dispose();
      return r;
    }
    const s = select.scalarLike(t, other);
    const r = select.compare(op, t, s, t.shape);
    s.dispose();
    return r;
  }
  assertTensor(where, 'other', other);
  other._checkLive(where, 'other');
  requireSame(where, t, 'this', other, 'other');
  return select.compare(op, t, other, broadcastShapes(where, t, other));
}

/** cond ? a : b with broadcasting; numbers become 0-d tensors of the tensor operand's dtype. */
export function whereOp(where: string, cond: Tensor, a: Tensor | number, b: Tensor | number): Tensor {
  assertTensor(where, 'condition', cond);
  const like = a instanceof Tensor ? a : b instanceof Tensor ? b : null;
  if (!like) throw typeError(where, 'input or other', 'a Tensor (at least one of them)', a);
  like._checkLive(where);
  checkMask(where, 'condition', cond, like);
  const made: Tensor[] = [];
  const operand = (v: Tensor | number, what: string): Tensor => {
    if (typeof v === 'number') {
      checkNumberOrNaN(where, what, v);
      if (like.dtype === 'int32') checkInt32Value(where, what, v);
      const s = select.scalarLike(like, v);
      made.push(s);
      return s;
    }
    assertTensor(where, what, v);
    v._checkLive(where, what);
    requireSame(where, like, 'input', v, what);
    return v;
  };
  const ta = operand(a, 'input');
  const tb = operand(b, 'other');
  const shape = broadcastPair(where, broadcastPair(where, cond.shape, ta.shape), tb.shape);
  const out = select.where(cond, ta, tb, shape);
  if (!out.requiresGrad) for (const s of made) s.dispose();
  return out;
}

/** torch.where(condition, input, other): input where condition (int32, nonzero true) holds, else other; broadcasting. */
function selectWhere(condition: Tensor, input: Tensor | number, other: Tensor | number): Tensor {
  return whereOp('where', condition, input, other);
}
export { selectWhere as where };

export function logSoftmaxOp(where: string, t: Tensor, dim: number): Tensor {
  requireFloat(where, t);
  if (t.ndim === 0) return shapeOps.reshape(select.logSoftmax(shapeOps.reshape(t, [1])), []);
  const d = normalizeDim(where, 'dim', dim, t.ndim);
  if (d !== t.ndim - 1) {
    const p = t.shape.map((_, i) => i);
    p[d] = t.ndim - 1;
    p[t.ndim - 1] = d;
    return shapeOps.permute(select.logSoftmax(shapeOps.permute(t, p)), p);
  }
  return select.logSoftmax(t);
}

function binaryOp(where: string, a: Tensor, b: Tensor | number, op: BinaryOp): Tensor {
  requireFloat(where, a);
  if (typeof b === 'number') {
    checkNumberOrNaN(where, 'other', b);
    return elementwise.scalar(op, a, b);
  }
  assertTensor(where, 'other', b);
  requireFloat(where, b, 'other');
  requireSame(where, a, 'this', b, 'other');
  return elementwise.binary(op, a, b, broadcastShapes(where, a, b));
}

function unaryOp(where: string, x: Tensor, op: UnaryOp): Tensor {
  requireFloat(where, x);
  return elementwise.unary(op, x);
}
