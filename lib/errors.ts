// One way to report bad arguments: "<where>: <what> must be <expected>, got <received>".
// All public entry points validate here, before any native call.

/**
 * Short, readable description of a received value for error messages. Bounded for untrusted
 * values (parsed JSON): long strings are cut and arrays nested deeper than two levels shown as […].
 */
export function describe(v: unknown, depth = 0): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (typeof v === 'string') return v.length > 200 ? `${JSON.stringify(v.slice(0, 200))}… (${v.length} characters)` : JSON.stringify(v);
  if (typeof v === 'function') return `function ${v.name || '(anonymous)'}`;
  if (Array.isArray(v)) {
    if (depth >= 2) return '[…]';
    const items = v.slice(0, 8).map((x) => (typeof x === 'object' && x !== null ? describe(x, depth + 1) : String(x)));
    return `[${items.join(', ')}${v.length > 8 ? ', …' : ''}]`;
  }
  const o = v as { constructor?: { name?: string }; describe?: () => string };
  if (typeof o.describe === 'function') return o.describe();
  return `an instance of ${o.constructor?.name ?? 'Object'}`;
}

export function typeError(where: string, what: string, expected: string, got: unknown): TypeError {
  return new TypeError(`${where}: ${what} must be ${expected}, got ${describe(got)}`);
}

export function rangeError(where: string, what: string, expected: string, got: unknown): RangeError {
  return new RangeError(`${where}: ${what} must be ${expected}, got ${describe(got)}`);
}

export function checkNumber(where: string, what: string, v: unknown): number {
  if (typeof v !== 'number') throw typeError(where, what, 'a number', v);
  if (!Number.isFinite(v)) throw rangeError(where, what, 'a finite number', v);
  return v;
}

export function checkPositive(where: string, what: string, v: unknown): number {
  checkNumber(where, what, v);
  if ((v as number) <= 0) throw rangeError(where, what, 'a number > 0', v);
  return v as number;
}

export function checkInt(where: string, what: string, v: unknown, min = 0): number {
  if (typeof v !== 'number') throw typeError(where, what, 'an integer', v);
  if (!Number.isInteger(v) || v < min) {
    throw rangeError(where, what, min === 0 ? 'a non-negative integer' : `an integer >= ${min}`, v);
  }
  return v;
}

export function checkBool(where: string, what: string, v: unknown): boolean {
  if (typeof v !== 'boolean') throw typeError(where, what, 'a boolean', v);
  return v;
}

export function checkOneOf<T extends string>(where: string, what: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw (typeof v === 'string' ? rangeError : typeError)(
      where, what, `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`, v);
  }
  return v as T;
}

export function checkOptions(where: string, opts: unknown): Record<string, unknown> {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) {
    throw typeError(where, 'options', 'an object', opts);
  }
  return opts as Record<string, unknown>;
}

/** Rejects option names the function does not know (a typo must not pass silently). */
export function checkKnownKeys(where: string, opts: Record<string, unknown>, known: readonly string[]): void {
  for (const k of Object.keys(opts)) {
    if (!known.includes(k)) {
      throw new TypeError(`${where}: unknown option ${JSON.stringify(k)} (known: ${known.join(', ')})`);
    }
  }
}
