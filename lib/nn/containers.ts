// Containers, after torch.nn: Sequential (its forward typed from its layers),
// ModuleList<T> and ModuleDict<T>. Entries are the container's own properties
// ('0', '1', … or the keys), so every traversal of Module finds them.
import type { Tensor } from '../tensor';
import { Module } from './module';
import { checkInt, rangeError, typeError } from '../errors';

// ------------------------------------------------------------------ typing

// `any` only in the patterns below, to match a forward of any signature.
/** The first argument a module's forward takes. */
export type ForwardInput<M> = M extends { forward(x: infer I, ...rest: any[]): any } ? I : never;
/** What a module's forward returns. */
export type ForwardOutput<M> = M extends { forward(...args: any[]): infer O } ? O : never;

/** What flows out of layer M given C flows in: a pass-through layer (Identity, forward<T>(x: T): T) keeps C. */
type Through<M, C> = unknown extends ForwardOutput<M> ? C : ForwardOutput<M>;

/** A module whose forward takes C: what a layer must be to follow one that outputs C. */
export type LayerTaking<C> = Module & { forward(x: C): unknown };

/**
 * The layers L as the constructor checks them: each as it is when it takes what the one before
 * it returns, else LayerTaking<that type> (so the argument at fault is the one reported).
 */
export type ChainedLayers<L extends readonly Module[], C> = L extends readonly [infer A, ...infer R extends Module[]]
  ? [[C] extends [ForwardInput<A>] ? A : LayerTaking<C>, ...ChainedLayers<R, Through<A, C>>]
  : L;

/** The input of a Sequential of layers L: its first layer's (a tensor when L is not a known tuple). */
export type SequentialInput<L extends readonly Module[]> = L extends readonly [infer A, ...Module[]]
  ? (unknown extends ForwardInput<A> ? Tensor : ForwardInput<A>)
  : Tensor;

/** What flows out of layers L when C flows in. */
type Flow<L extends readonly Module[], C> = L extends readonly [infer A, ...infer R extends Module[]] ? Flow<R, Through<A, C>> : C;

/** The output of a Sequential of layers L (a tensor when L is not a known tuple). */
export type SequentialOutput<L extends readonly Module[]> = number extends L['length'] ? Tensor : Flow<L, SequentialInput<L>>;

// ------------------------------------------------------------------ helpers

type Entries = Record<string, unknown>;

/** A list index as torch takes it (negative from the end), checked against `n`. */
function listIndex(where: string, i: unknown, n: number, insert = false): number {
  if (typeof i !== 'number') throw typeError(where, 'index', 'an integer', i);
  if (!Number.isInteger(i)) throw rangeError(where, 'index', 'an integer', i);
  const j = i < 0 ? i + n : i;
  if (j < 0 || j > n || (j === n && !insert)) {
    throw rangeError(where, 'index', n === 0 && !insert ? 'an index of an entry (the container is empty)' : `in [${-n}, ${insert ? n + 1 : n})`, i);
  }
  return j;
}

function checkModule(where: string, what: string, m: unknown): Module {
  if (!(m instanceof Module)) throw typeError(where, what, 'a Module', m);
  return m;
}

/** The number of consecutive entries '0', '1', … of a list-like container. */
function countEntries(self: Module): number {
  let n = 0;
  while ((self as unknown as Entries)[String(n)] instanceof Module) n++;
  return n;
}

// --------------------------------------------------------------- Sequential

/**
 * Applies its layers in order; they are named '0', '1', …. forward is typed from the layers:
 * new Sequential(new Linear(4, 8), new ReLU()) takes and returns a Tensor, and a layer that
 * cannot take what the one before it returns is a type error at that argument.
 */
// In and Out are computed from L (they are never given): as parameters of their own, a
// Sequential<[Linear, ReLU]> is still a Sequential (its L is then only in covariant places).
export class Sequential<L extends Module[] = Module[], In = SequentialInput<L>, Out = SequentialOutput<L>> extends Module {
  constructor(...layers: L & ChainedLayers<L, SequentialInput<L>>) {
    super();
    (layers as Module[]).forEach((m, i) => {
      checkModule('Sequential', `modules[${i}]`, m);
      (this as unknown as Entries)[String(i)] = m;
    });
  }

  get length(): number {
    return countEntries(this);
  }

  /** The layer at index i (negative from the end, as torch's seq[i]). */
  at<I extends number>(i: I): L[I] {
    const j = listIndex('Sequential.at', i, this.length);
    return (this as unknown as Entries)[String(j)] as L[I];
  }

  *[Symbol.iterator](): Iterator<L[number]> {
    for (let i = 0, n = this.length; i < n; i++) yield (this as unknown as Entries)[String(i)] as L[number];
  }

  forward(x: In): Out {
    // By index, not children(): the same module may appear twice and runs twice.
    let cur: unknown = x;
    for (let i = 0, n = this.length; i < n; i++) cur = ((this as unknown as Entries)[String(i)] as Module).forward(cur);
    return cur as Out;
  }
}

// --------------------------------------------------------------- ModuleList

/**
 * A list of modules, registered as children '0', '1', … (no forward of its own), as torch's
 * nn.ModuleList: at (negative indices from the end), set, append, extend, insert, pop, length,
 * iteration. T: what it holds, so at() and iteration are typed.
 */
export class ModuleList<T extends Module = Module> extends Module {
  constructor(modules: Iterable<T> = []) {
    super();
    if (modules === null || typeof (modules as Iterable<T>)[Symbol.iterator] !== 'function') {
      throw typeError('ModuleList', 'modules', 'an iterable of modules', modules);
    }
    this.extend(modules);
  }

  get length(): number {
    return countEntries(this);
  }

  /** The module at index i (negative from the end). */
  at(i: number): T {
    const j = listIndex('ModuleList.at', i, this.length);
    return (this as unknown as Entries)[String(j)] as T;
  }

  /** Replaces the module at index i (negative from the end); returns this. */
  set(i: number, m: T): this {
    const j = listIndex('ModuleList.set', i, this.length);
    (this as unknown as Entries)[String(j)] = checkModule('ModuleList.set', 'module', m);
    return this;
  }

  append(m: T): this {
    (this as unknown as Entries)[String(this.length)] = checkModule('ModuleList.append', 'module', m);
    return this;
  }

  /** Appends every module of an iterable (each checked before any is added); returns this. */
  extend(modules: Iterable<T>): this {
    if (modules === null || typeof modules !== 'object' || typeof (modules as Iterable<T>)[Symbol.iterator] !== 'function') {
      throw typeError('ModuleList.extend', 'modules', 'an iterable of modules', modules);
    }
    const list = [...modules];
    list.forEach((m, i) => checkModule('ModuleList.extend', `modules[${i}]`, m));
    for (const m of list) this.append(m);
    return this;
  }

  /** Inserts m before index i (negative from the end; length appends), as list.insert; returns this. */
  insert(i: number, m: T): this {
    const n = this.length;
    const j = listIndex('ModuleList.insert', i, n, true);
    checkModule('ModuleList.insert', 'module', m);
    const self = this as unknown as Entries;
    for (let k = n; k > j; k--) self[String(k)] = self[String(k - 1)];
    self[String(j)] = m;
    return this;
  }

  /** Removes and returns the module at index i (default the last), renumbering the rest. */
  pop(i = -1): T {
    const n = this.length;
    const j = listIndex('ModuleList.pop', i, n);
    const self = this as unknown as Entries;
    const out = self[String(j)] as T;
    for (let k = j; k < n - 1; k++) self[String(k)] = self[String(k + 1)];
    delete self[String(n - 1)];
    return out;
  }

  *[Symbol.iterator](): Iterator<T> {
    for (let i = 0, n = this.length; i < n; i++) yield (this as unknown as Entries)[String(i)] as T;
  }

  forward(): never {
    throw new Error('ModuleList has no forward(); iterate over it and call each module');
  }

  /**
   * As torch (2.x) prints a ModuleList: runs of entries that print the same are one line,
   * `(0-31): 32 x LlamaDecoderLayer(...)`.
   */
  toString(): string {
    const reprs = [...this].map(String);
    if (!reprs.length) return `${this.constructor.name}()`;
    const lines: string[] = [];
    for (let i = 0; i < reprs.length;) {
      let j = i;
      while (j + 1 < reprs.length && reprs[j + 1] === reprs[i]) j++;
      const head = i === j ? `(${i}): ` : `(${i}-${j}): ${j - i + 1} x `;
      lines.push(`${head}${reprs[i]}`.split('\n').join('\n  '));
      i = j + 1;
    }
    return `${this.constructor.name}(\n  ${lines.join('\n  ')}\n)`;
  }
}

// --------------------------------------------------------------- ModuleDict

/**
 * Modules by name, registered as children under their keys, in insertion order (as torch's
 * nn.ModuleDict; keys that look like array indices, '0', '1', …, come first, as in any JS
 * object). get, set, has, delete, pop, keys, values, entries, update, clear, length;
 * iterating yields the keys, as torch's. T: what it holds.
 */
export class ModuleDict<T extends Module = Module> extends Module {
  constructor(modules?: Record<string, T> | Iterable<readonly [string, T]>) {
    super();
    if (modules !== undefined) this.update(modules);
  }

  private checkKey(where: string, key: unknown, adding: boolean): string {
    if (typeof key !== 'string') throw typeError(where, 'key', 'a string', key);
    if (key === '' || key.includes('.') || key.startsWith('_')) {
      throw rangeError(where, 'key', "a non-empty name without '.' that does not start with '_'", key);
    }
    // An own property or method of the dict would be shadowed (torch refuses such keys too).
    if (adding && key in this && !((this as unknown as Entries)[key] instanceof Module && Object.prototype.hasOwnProperty.call(this, key))) {
      throw rangeError(where, 'key', 'a name that is not a property or method of ModuleDict', key);
    }
    return key;
  }

  get length(): number {
    return [...this.namedChildrenAll()].length;
  }

  /** Every (key, module) entry, including one module under two keys. */
  private *namedChildrenAll(): Generator<[string, T]> {
    for (const k of Object.keys(this)) {
      const v = (this as unknown as Entries)[k];
      if (!k.startsWith('_') && v instanceof Module) yield [k, v as T];
    }
  }

  /** The module under key; a missing key is a RangeError (torch's KeyError). */
  get(key: string): T {
    this.checkKey('ModuleDict.get', key, false);
    if (!this.has(key)) throw rangeError('ModuleDict.get', 'key', `one of the keys (${this.keys().map((k) => `'${k}'`).join(', ') || 'none'})`, key);
    return (this as unknown as Entries)[key] as T;
  }

  has(key: string): boolean {
    return typeof key === 'string' && Object.prototype.hasOwnProperty.call(this, key) && !key.startsWith('_') &&
      (this as unknown as Entries)[key] instanceof Module;
  }

  /** Adds or replaces the module under key; returns this. */
  set(key: string, m: T): this {
    this.checkKey('ModuleDict.set', key, true);
    (this as unknown as Entries)[key] = checkModule('ModuleDict.set', 'module', m);
    return this;
  }

  /** Removes key; returns whether it was there. */
  delete(key: string): boolean {
    if (!this.has(key)) return false;
    delete (this as unknown as Entries)[key];
    return true;
  }

  /** Removes key and returns its module (a missing key is a RangeError). */
  pop(key: string): T {
    const m = this.get(key);
    this.delete(key);
    return m;
  }

  clear(): void {
    for (const k of this.keys()) this.delete(k);
  }

  keys(): string[] {
    return [...this.namedChildrenAll()].map(([k]) => k);
  }

  values(): T[] {
    return [...this.namedChildrenAll()].map(([, m]) => m);
  }

  entries(): [string, T][] {
    return [...this.namedChildrenAll()];
  }

  /** Adds (key, module) pairs from an object or an iterable of pairs (all checked first); returns this. */
  update(modules: Record<string, T> | Iterable<readonly [string, T]>): this {
    const where = 'ModuleDict.update';
    if (modules === null || typeof modules !== 'object') throw typeError(where, 'modules', 'an object of modules or an iterable of [key, module] pairs', modules);
    const pairs: (readonly [string, T])[] = typeof (modules as Iterable<unknown>)[Symbol.iterator] === 'function'
      ? [...(modules as Iterable<readonly [string, T]>)]
      : Object.entries(modules as Record<string, T>);
    pairs.forEach((p, i) => {
      if (!Array.isArray(p) || p.length !== 2) throw typeError(where, `modules[${i}]`, 'a [key, module] pair', p);
      this.checkKey(where, p[0], true);
      checkModule(where, `modules['${p[0]}']`, p[1]);
    });
    for (const [k, m] of pairs) (this as unknown as Entries)[k] = m;
    return this;
  }

  *[Symbol.iterator](): Iterator<string> {
    yield* this.keys();
  }

  forward(): never {
    throw new Error('ModuleDict has no forward(); get a module by its key and call it');
  }
}
