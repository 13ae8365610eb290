// The op registry (test/ops/) covers the API: every differentiable Tensor
// method and every F function has an entry, so a new op without gradient
// checks, CPU/CUDA parity and bad-input checks fails here. And every entry is
// well formed: it names a function that exists and has what its suites need.
import * as lib from '../lib';
import { F, Tensor } from '../lib';
import { OPS, gradcheckSamples, isDifferentiable, isInt, paritySamples } from './ops';

/**
 * Tensor methods that are not ops: reading data, changing it in place outside
 * autograd, autograd itself, the tensor's lifetime, printing. (Their errors are
 * in errors.test.ts and bad-input.test.ts.)
 */
const NOT_OPS = ['toArray', 'tolist', 'item', 'backward', 'detach', 'dispose', 'copy_', 'fill_', 'zero_', 'requiresGrad_', 'describe', 'toString'];

/** The public methods of Tensor: own functions along the prototype chain, not accessors, not `_internal`. */
function tensorMethods(): string[] {
  const names = new Set<string>();
  for (let p = Tensor.prototype; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    for (const k of Object.getOwnPropertyNames(p)) {
      const d = Object.getOwnPropertyDescriptor(p, k)!;
      if (k !== 'constructor' && !k.startsWith('_') && typeof d.value === 'function') names.add(k);
    }
  }
  return [...names].sort();
}

const entries = new Set(OPS.map((op) => op.name));

describe('the registry covers the API', () => {
  test('every Tensor method is an op with an entry, or listed as not an op', () => {
    const methods = tensorMethods();
    expect(methods.length).toBeGreaterThan(20);
    const missing = methods.filter((m) => !NOT_OPS.includes(m) && !entries.has(`Tensor.${m}`));
    expect(missing).toEqual([]); // a new op: add an entry to test/ops/
    for (const m of NOT_OPS) expect(methods).toContain(m);
    for (const m of NOT_OPS) expect(entries.has(`Tensor.${m}`)).toBe(false);
  });

  test('every F function has an entry', () => {
    const functions = Object.keys(F).filter((k) => typeof (F as Record<string, unknown>)[k] === 'function');
    expect(functions.length).toBeGreaterThan(5);
    expect(functions.filter((k) => !entries.has(`F.${k}`))).toEqual([]);
  });

  test('every entry names a function of the public API', () => {
    for (const op of OPS) {
      // A name without an owner ('cat') is a function of the package.
      const [owner, member] = op.name.includes('.') ? op.name.split('.') : ['', op.name];
      const target = owner === '' ? lib : owner === 'Tensor' ? Tensor.prototype : owner === 'F' ? F : (lib as unknown as Record<string, { prototype?: object }>)[owner]?.prototype;
      expect({ op: op.name, isFunction: typeof (target as Record<string, unknown> | undefined)?.[member] }).toEqual({ op: op.name, isFunction: 'function' });
    }
  });
});

describe('every entry is well formed', () => {
  test('names are unique, and so are the sample and error names of each entry', () => {
    expect(entries.size).toBe(OPS.length);
    for (const op of OPS) {
      expect(new Set(op.samples.map((s) => s.name)).size).toBe(op.samples.length);
      expect(new Set(op.errors.map((e) => e.name)).size).toBe(op.errors.length);
    }
  });

  test.each(OPS.map((op) => [op.name, op] as const))('%s', (_name, op) => {
    expect(op.where.length).toBeGreaterThan(0);
    expect(op.dtypes.length).toBeGreaterThan(0);
    expect(op.devices).toContain('cpu');
    expect(op.samples.length).toBeGreaterThan(0);
    if (isDifferentiable(op)) expect(gradcheckSamples().some(([o]) => o === op)).toBe(true);
    if (op.devices.includes('cuda')) expect(paritySamples().some(([o]) => o === op)).toBe(true);
    // Some way to be refused: its own error cases, or inputs the derived bad-input checks can spoil.
    expect(op.errors.length + op.samples.filter((s) => s.inputs.length > 0).length).toBeGreaterThan(0);
    const layer = !op.name.startsWith('Tensor.') && !op.name.startsWith('F.');
    for (const s of op.samples) {
      for (const spec of s.inputs) {
        if (isInt(spec)) expect(spec.grad).toBeUndefined();
        if (spec.state) expect(layer).toBe(true);
      }
    }
  });
});
