// Module: the JS-side module tree, after torch.nn.Module. Children and
// parameters are discovered from the instance's own properties in definition
// order (a Module value is a child, a Tensor value a parameter, unless it was
// registered as a buffer); properties whose names start with '_' are private
// and never discovered. Every traversal is built on one generator,
// namedMembers(), so names and order agree everywhere.
import { Tensor } from '../tensor';
import { assertTensor } from '../checks';
import { DeviceSpec, parseDevice } from '../device';
import { checkBool, checkOneOf, checkOptions, checkKnownKeys, rangeError, typeError } from '../errors';
import { DType, DTYPES, FloatDType, FLOAT_DTYPES, isFloating } from '../dtype';
import { clearGrads, noGrad } from '../autograd';

export interface LoadStateDictResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

export type StateDict = Record<string, Tensor>;

/** Module.to's options: where the tensors go and the dtype of the float ones. */
export interface ModuleToOptions {
  device?: DeviceSpec;
  dtype?: FloatDType;
}

export abstract class Module {
  /** Training mode (dropout active); set by train() / eval(). */
  training = true;
  /** @internal Names of own Tensor properties that are buffers, not parameters. */
  private _buffers?: Set<string>;

  abstract forward(...args: unknown[]): unknown;

  /**
   * Runs forward with these arguments, typed from the module's own forward (torch's
   * module(x)): model.call(x) is model.forward(x).
   */
  call<M extends Module>(this: M, ...args: Parameters<M['forward']>): ReturnType<M['forward']> {
    return this.forward(...args) as ReturnType<M['forward']>;
  }

  /** Marks an own tensor property as a buffer (in the state dict, not a parameter). */
  registerBuffer(name: string, value: Tensor | null): void {
    if (typeof name !== 'string' || name === '' || name.includes('.') || name.startsWith('_')) {
      throw typeError('Module.registerBuffer', 'name', "a non-empty name without '.' that does not start with '_'", name);
    }
    if (value !== null) assertTensor('Module.registerBuffer', 'value', value);
    if (!this._buffers) {
      Object.defineProperty(this, '_buffers', { value: new Set<string>(), enumerable: false, writable: true });
    }
    this._buffers!.add(name);
    (this as Record<string, unknown>)[name] = value;
  }

  // ------------------------------------------------------------- traversal

  /** Own (name, value) pairs of one kind, in definition order. */
  private *ownMembers(kind: 'module' | 'parameter' | 'buffer'): Generator<[string, Module | Tensor]> {
    for (const key of Object.keys(this)) {
      if (key.startsWith('_')) continue;
      const v = (this as Record<string, unknown>)[key];
      if (kind === 'module' && v instanceof Module) yield [key, v];
      else if (v instanceof Tensor) {
        const isBuffer = this._buffers?.has(key) ?? false;
        if ((kind === 'buffer') === isBuffer && kind !== 'module') yield [key, v];
      }
    }
  }

  /**
   * The one walk every traversal uses: (prefixed name, value) for each
   * parameter or buffer of this module and (with recurse) its descendants;
   * a tensor reachable under two names is listed once, at its first name.
   */
  private *namedMembers(kind: 'parameter' | 'buffer', prefix: string, recurse: boolean, dedup = true): Generator<[string, Tensor]> {
    const seen = new Set<Tensor>();
    const modules: Iterable<[string, Module]> = recurse ? this.namedModules(prefix) : [[prefix, this]];
    for (const [modName, mod] of modules) {
      for (const [name, t] of mod.ownMembers(kind)) {
        if (dedup && seen.has(t as Tensor)) continue;
        seen.add(t as Tensor);
        yield [modName ? `${modName}.${name}` : name, t as Tensor];
      }
    }
  }

  /** Direct children as (name, module), in definition order. */
  *namedChildren(): Generator<[string, Module]> {
    const seen = new Set<Module>();
    for (const [name, m] of this.ownMembers('module')) {
      if (seen.has(m as Module)) continue;
      seen.add(m as Module);
      yield [name, m as Module];
    }
  }

  *children(): Generator<Module> {
    for (const [, m] of this.namedChildren()) yield m;
  }

  /** This module (named `prefix`, '' by default) and all descendants, depth first, each once. */
  *namedModules(prefix = '', memo: Set<Module> = new Set()): Generator<[string, Module]> {
    if (memo.has(this)) return;
    memo.add(this);
    yield [prefix, this];
    for (const [name, child] of this.namedChildren()) {
      yield* child.namedModules(prefix ? `${prefix}.${name}` : name, memo);
    }
  }

  *modules(): Generator<Module> {
    for (const [, m] of this.namedModules()) yield m;
  }

  /**
   * A generator of (dotted name, parameter) pairs, as torch's named_parameters(): each tensor
   * once, at its first name; `prefix` goes before every name, recurse false keeps to this
   * module's own. Spread it for an array: [...model.namedParameters()].
   */
  *namedParameters(prefix = '', recurse = true): Generator<[string, Tensor]> {
    yield* this.namedMembers('parameter', prefix, recurse);
  }

  /** The parameters as an array (each once), in namedParameters() order. */
  parameters(recurse = true): Tensor[] {
    return [...this.namedParameters('', recurse)].map(([, p]) => p);
  }

  *namedBuffers(prefix = '', recurse = true): Generator<[string, Tensor]> {
    yield* this.namedMembers('buffer', prefix, recurse);
  }

  /** The buffers as an array (each once), in namedBuffers() order. */
  buffers(recurse = true): Tensor[] {
    return [...this.namedBuffers('', recurse)].map(([, b]) => b);
  }

  /** Total number of parameter elements (optionally only trainable ones). */
  numParameters(onlyTrainable = false): number {
    let n = 0;
    for (const p of this.parameters()) if (!onlyTrainable || p.requiresGrad) n += p.numel;
    return n;
  }

  /** The submodule at a dotted path ('' is this module). */
  getSubmodule(path: string): Module {
    if (typeof path !== 'string') throw typeError('Module.getSubmodule', 'path', 'a dotted path string', path);
    if (path === '') return this;
    let cur: Module = this;
    const parts = path.split('.');
    parts.forEach((part, i) => {
      const next = part.startsWith('_') ? undefined : (cur as unknown as Record<string, unknown>)[part];
      if (!(next instanceof Module) || !Object.prototype.hasOwnProperty.call(cur, part)) {
        const where = i === 0 ? 'the root module' : `'${parts.slice(0, i).join('.')}'`;
        throw new RangeError(`Module.getSubmodule: ${where} has no submodule '${part}' (path '${path}')`);
      }
      cur = next;
    });
    return cur;
  }

  /** Replaces (or adds) the submodule at a dotted path; the parent must exist. */
  setSubmodule(path: string, module: Module): void {
    const where = 'Module.setSubmodule';
    if (typeof path !== 'string' || path === '') throw typeError(where, 'path', 'a non-empty dotted path', path);
    if (!(module instanceof Module)) throw typeError(where, 'module', 'a Module', module);
    const parts = path.split('.');
    const last = parts.pop() as string;
    if (last.startsWith('_')) throw rangeError(where, 'path', "a name whose parts do not start with '_'", path);
    let parent: Module;
    try {
      parent = this.getSubmodule(parts.join('.'));
    } catch (e) {
      const why = (e as Error).message.replace(/^Module\.getSubmodule: /, '').replace(/ \(path '.*'\)$/, '');
      throw new RangeError(`${where}: cannot set '${path}': ${why}`);
    }
    const existing = (parent as unknown as Record<string, unknown>)[last];
    if (existing !== undefined && !(existing instanceof Module)) {
      throw new TypeError(`${where}: '${path}' holds ${existing instanceof Tensor ? 'a tensor' : 'a non-module value'}, not a module`);
    }
    (parent as unknown as Record<string, unknown>)[last] = module;
  }

  // ---------------------------------------------------------- state dicts

  /**
   * Parameters and buffers by dotted name, as detached views of the data. A
   * tensor shared by two modules (tied weights) appears under both names, as
   * in torch.
   */
  stateDict(): StateDict {
    const entries = [...this.stateEntries()];
    for (const [name, t] of entries) t._checkLive('Module.stateDict', `'${name}'`);
    const out: StateDict = {};
    for (const [name, t] of entries) out[name] = t.detach();
    return out;
  }

  private *stateEntries(): Generator<[string, Tensor]> {
    yield* this.namedMembers('parameter', '', true, false);
    yield* this.namedMembers('buffer', '', true, false);
  }

  /**
   * Copies values from a state dict into this module's parameters and buffers.
   * Everything is checked before anything is written, so a failed load changes
   * nothing. With strict (the default), missing and unexpected keys throw.
   */
  loadStateDict(stateDict: Record<string, Tensor>, options?: { strict?: boolean }): LoadStateDictResult {
    const where = 'Module.loadStateDict';
    if (stateDict === null || typeof stateDict !== 'object' || Array.isArray(stateDict)) {
      throw typeError(where, 'stateDict', 'an object mapping names to tensors', stateDict);
    }
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['strict']);
    const strict = o.strict === undefined ? true : checkBool(where, 'options.strict', o.strict);
    const own = new Map<string, Tensor>(this.stateEntries());
    const missingKeys = [...own.keys()].filter((k) => !(k in stateDict));
    const unexpectedKeys = Object.keys(stateDict).filter((k) => !own.has(k));
    const problems: string[] = [];
    for (const [k, target] of own) {
      if (!(k in stateDict)) continue;
      if (target.isDisposed) {
        problems.push(`the module's '${k}' has been disposed`);
        continue;
      }
      const src = stateDict[k];
      if (!(src instanceof Tensor)) {
        problems.push(`'${k}' is not a Tensor`);
      } else if (src.isDisposed) {
        problems.push(`'${k}' has been disposed`);
      } else if (src.shape.length !== target.shape.length || src.shape.some((d, i) => d !== target.shape[i])) {
        problems.push(`'${k}' has shape [${src.shape.join(', ')}], the module expects [${target.shape.join(', ')}]`);
      }
    }
    if (strict && missingKeys.length) problems.push(`missing keys: ${missingKeys.map((k) => `'${k}'`).join(', ')}`);
    if (strict && unexpectedKeys.length) problems.push(`unexpected keys: ${unexpectedKeys.map((k) => `'${k}'`).join(', ')}`);
    if (problems.length) throw new RangeError(`${where}: ${problems.join('; ')}`);
    noGrad(() => {
      for (const [k, target] of own) if (k in stateDict) target.copy_(stateDict[k]);
    });
    return { missingKeys, unexpectedKeys };
  }

  // ------------------------------------------------------------------ modes

  /** Sets training mode on this module and every descendant; returns this. */
  train(mode = true): this {
    checkBool('Module.train', 'mode', mode);
    for (const m of this.modules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Clears parameter gradients (to null, freeing them; or to zeros with setToNone false). */
  zeroGrad(setToNone = true): void {
    checkBool('Module.zeroGrad', 'setToNone', setToNone);
    clearGrads('Module.zeroGrad', this.parameters(), setToNone);
  }

  /** Sets requiresGrad on every parameter (each is checked before any changes); returns this. */
  requiresGrad_(flag = true): this {
    const where = 'Module.requiresGrad_';
    checkBool(where, 'flag', flag);
    const params = [...this.namedParameters()];
    for (const [name, p] of params) p._checkRequiresGrad(where, flag, `parameter '${name}'`);
    for (const [, p] of params) p.requiresGrad_(flag);
    return this;
  }

  /**
   * Moves every parameter and buffer to a device and/or casts the float ones to a float dtype, in
   * place (tensor objects are kept, so optimisers holding them stay valid); returns this. As torch's
   * Module.to: to('cuda'), to('bfloat16'), to({ device, dtype }); int32 buffers keep their dtype, and
   * gradients follow their tensors.
   */
  to(target: DeviceSpec | FloatDType | ModuleToOptions): this {
    const where = 'Module.to';
    let device: DeviceSpec | undefined;
    let dtype: FloatDType | undefined;
    if (typeof target === 'string' && (DTYPES as readonly string[]).includes(target)) {
      dtype = checkOneOf(where, 'dtype', target, FLOAT_DTYPES);
    } else if (target !== null && typeof target === 'object') {
      const o = checkOptions(where, target);
      checkKnownKeys(where, o, ['device', 'dtype']);
      device = o.device as DeviceSpec | undefined;
      if (o.dtype !== undefined) dtype = checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    } else {
      device = target as DeviceSpec;
    }
    const dev = device === undefined ? null : parseDevice(where, 'device', device);
    const targetDtype = (t: Tensor) => (dtype !== undefined && isFloating(t.dtype) ? dtype : t.dtype);
    const changes = (t: Tensor) => (dev !== null && t.device !== dev.name) || targetDtype(t) !== t.dtype;
    // Every tensor to change is checked before any changes, so a disposed one leaves the module as it was.
    for (const [name, t] of [...this.namedParameters(), ...this.namedBuffers()]) {
      if (!changes(t)) continue;
      t._checkLive(where, `'${name}'`);
      t.grad?._checkLive(where, `the gradient of '${name}'`);
    }
    const convert = (t: Tensor, d: DType) => {
      let out = t.detach();
      if (d !== out.dtype) out = out.to(d);
      if (dev !== null && out.device !== dev.name) out = out.to(dev.name as DeviceSpec);
      return out;
    };
    // A tensor shared by two modules (tied weights) is converted once.
    for (const t of new Set([...this.parameters(), ...this.buffers()])) {
      if (!changes(t)) continue;
      const d = targetDtype(t);
      const moved = convert(t, d);
      const grad = t.grad ? convert(t.grad, d) : null;
      t._replaceWith(moved);
      t.grad = grad;
    }
    return this;
  }

  /** Calls fn on every module (children first, like torch's apply); returns this. */
  apply(fn: (m: Module) => void): this {
    if (typeof fn !== 'function') throw typeError('Module.apply', 'fn', 'a function', fn);
    const all = [...this.modules()].reverse();
    for (const m of all) fn(m);
    return this;
  }

  /**
   * The module tree as torch prints it: `Name(extraRepr)` for a module without children, else
   * `Name(`, the extraRepr lines, `(child): ...` per child (indented by 2), `)`.
   */
  toString(): string {
    const extra = this.extraRepr();
    const extraLines = extra ? extra.split('\n') : [];
    const childLines = [...this.reprChildren()].map(([name, child]) => `(${name}): ${String(child).split('\n').join('\n  ')}`);
    const lines = [...extraLines, ...childLines];
    const name = this.constructor.name;
    if (!lines.length) return `${name}()`;
    if (extraLines.length === 1 && !childLines.length) return `${name}(${extraLines[0]})`;
    return `${name}(\n  ${lines.join('\n  ')}\n)`;
  }

  /** @internal What util.inspect and console.log show: the tree of toString(). */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }

  /**
   * The children toString() prints, as (name, module); namedChildren() unless a layer shows
   * them as its reference library does (LoRALinear's wrapped layer as PEFT's base_layer).
   */
  reprChildren(): Iterable<[string, Module]> {
    return this.namedChildren();
  }

  /**
   * The module's own settings for toString(), as torch's extra_repr (Linear:
   * `in_features=4, out_features=3, bias=True`); subclasses override. May span lines.
   */
  extraRepr(): string {
    return '';
  }
}
