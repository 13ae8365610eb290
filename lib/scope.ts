// tidy() and keep(): scopes that free the tensors made inside them.
import { Tensor, Store } from './tensor';
import { assertTensor } from './checks';
import { typeError } from './errors';

// Open tidy() scopes, innermost last: the tensors that created a storage inside each.
const scopes: Tensor[][] = [];

/** Adds a tensor with a new storage to the innermost open scope (the Tensor constructor calls this). */
export function track(t: Tensor): void {
  if (scopes.length) scopes[scopes.length - 1].push(t);
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
    // A Module: its parameters and buffers (duck-typed: nn/module builds on tensors, not the reverse).
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
