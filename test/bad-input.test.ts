// Bad input to the public entry points. First every op of the op registry (test/ops/): its own
// error cases, then bad inputs derived from its samples (a disposed input, int32 where floats are
// wanted, float32 mixed with float64, tensors on two devices), each refused with the inputs left as
// they were. Then what test/errors.test.ts does
// not cover: NaN and Inf where they matter, disposed tensors, options edited after construction,
// values native code cannot represent, adapters that do not fit the model, tensors on another
// device. Every one is a clear Error (a TypeError or RangeError naming the function and the
// argument for bad arguments), and the call changes nothing: the checks below compare the state
// after the throw with the state before, bit for bit.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Adam, AdamW, Linear, LlamaForCausalLM, LoRALinear, Module, Tensor, backendInfo, cuda, full, getRngState, injectLora,
  loadAdapter, manualSeed, mergeLora, noGrad, parseLlamaConfig, qkvFilter, randn, saveAdapter, saveMerged, setRngState, tensor,
  unmergeLora, withAdaptersDisabled, zeros,
} from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { native } from '../lib/native';
import { expectThrows } from './helpers/expect-throws';
import { OPS, STANDARD_MESSAGE, isInt, makeInputs, numel, outputs, sampleSeed } from './ops';
import type { CallContext, MakeOptions, OpInfo, OpSample } from './ops';
import { bits, moduleState, optimizerState } from './helpers/state';
import { ToyTransformer } from './helpers/toy';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-bad-input-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The error fn throws (sync), checked to be an Error with that code and message. */
function caught(fn: () => unknown): NodeJS.ErrnoException {
  let e: unknown;
  try {
    fn();
  } catch (err) {
    e = err;
  }
  // Errors made by the native addon belong to the main realm: check the brand, not instanceof.
  expect(Object.prototype.toString.call(e)).toBe('[object Error]');
  return e as NodeJS.ErrnoException;
}

function loraModel(seed = 3): ToyTransformer {
  manualSeed(seed);
  const model = new ToyTransformer(8, 2);
  injectLora(model, { r: 2, alpha: 4, filter: qkvFilter });
  noGrad(() => {
    for (const p of model.parameters()) if (p.requiresGrad && p.shape[1] === 2) p.copy_(randn([...p.shape]));
  });
  return model;
}

function layer(model: Module, name: string): LoRALinear {
  return model.getSubmodule(name) as LoRALinear;
}

// ==================================================================== every op

describe('every op refuses bad input (the op registry)', () => {
  const hasCuda = cuda.isAvailable();
  const runnable = (s: OpSample) => !s.needsCuda || hasCuda;
  const ctx: CallContext = { device: 'cpu', dtype: 'float32' };
  const floatInputs = (s: OpSample) => s.inputs.flatMap((spec, i) => (isInt(spec) ? [] : [i]));
  /** Float arguments of the call (not a module's own tensors). */
  const floatArgs = (s: OpSample) => floatInputs(s).filter((i) => !s.inputs[i].state);
  const args = (s: OpSample) => s.inputs.flatMap((spec, i) => (spec.state ? [] : [i]));
  /** The error the call throws (it must throw), which leaves the live inputs as they were and gives no gradient. */
  const refused = (s: OpSample, xs: Tensor[]): NodeJS.ErrnoException => {
    const live = xs.filter((x) => !x.isDisposed);
    const before = live.map(bits);
    const e = caught(() => s.call(xs, ctx));
    expect(live.map(bits)).toEqual(before);
    expect(live.every((x) => x.grad === null)).toBe(true);
    return e;
  };
  const thrown = (op: OpInfo, s: OpSample, o: MakeOptions): NodeJS.ErrnoException => refused(s, makeInputs(s, ctx, sampleSeed(op, s), o));
  const named = (op: OpInfo, message: string) => expect({ message, named: op.where.some((w) => message.startsWith(`${w}: `)) }).toEqual({ message, named: true });

  test.each(OPS.flatMap((op) => op.errors.map((e) => [`${op.name}: ${e.name}`, e] as const)))('%s', (_t, e) => {
    const err = expectThrows(e.call, e.type, e.message);
    if (e.standard) expect(err.message).toMatch(STANDARD_MESSAGE);
  });

  // The checks are about arguments, not sizes: samples of up to 10^4 input elements.
  const small = (s: OpSample) => s.inputs.reduce((n, spec) => n + numel(spec.shape), 0) <= 1e4;
  const withInputs = OPS.flatMap((op) => op.samples.filter((s) => s.inputs.length > 0 && runnable(s) && small(s)).map((s) => [`${op.name}: ${s.name}`, op, s] as const));

  test.each(withInputs)('%s: each input disposed in turn: ERR_TENSOR_DISPOSED naming the op', (_t, op, s) => {
    s.inputs.forEach((_spec, i) => {
      const xs = makeInputs(s, ctx, sampleSeed(op, s));
      xs[i].dispose();
      const e = refused(s, xs);
      expect({ input: i, code: e.code }).toEqual({ input: i, code: 'ERR_TENSOR_DISPOSED' });
      expect(e.message).toMatch(/has been disposed/);
      named(op, e.message);
    });
  });

  const refusing = withInputs.filter(([, op, s]) => op.int32 === 'refused' && floatArgs(s).length > 0);
  test.each(refusing)('%s: an int32 tensor for each float argument in turn: a TypeError or RangeError naming the op', (_t, op, s) => {
    for (const i of floatArgs(s)) {
      const e = thrown(op, s, { dtypeOf: (k) => (k === i ? 'int32' : undefined) });
      expect({ input: i, type: e.constructor, message: e.message })
        .toEqual({ input: i, type: e instanceof TypeError ? TypeError : RangeError, message: expect.stringMatching(/int32/) });
      named(op, e.message);
    }
  });

  // The plainest call of each op that takes int32 (shape and device ops): as on the same values in float64.
  const supporting = OPS.filter((op) => op.int32 === 'supported').map((op) => [`${op.name}: ${op.samples[0].name}`, op, op.samples[0]] as const);
  test.each(supporting.filter(([, , s]) => runnable(s)))('%s: int32 inputs give what the same values give in float64', (_t, op, s) => {
    const f64: CallContext = { device: 'cpu', dtype: 'float64' };
    const ints = makeInputs(s, f64, sampleSeed(op, s), { grad: false, dtypeOf: () => 'int32' });
    const floats = ints.map((x, i) => (isInt(s.inputs[i]) ? x : x.to('float64'))); // index inputs stay int32
    const got = outputs(s.call(ints, f64));
    const want = outputs(s.call(floats, f64));
    expect(got.map((o) => o.shape)).toEqual(want.map((o) => o.shape));
    got.forEach((o, k) => expect(Array.from(o.toArray())).toEqual(Array.from(want[k].toArray())));
    expect(ints.some((x) => !x.toArray().every((v) => v === 0))).toBe(true);
  });

  const mixing = withInputs.filter(([, , s]) => floatInputs(s).length > 1 && !s.separateInputs);
  test.each(mixing)('%s: each float argument in turn as float64 among float32 inputs: a TypeError naming both dtypes', (_t, op, s) => {
    for (const i of floatArgs(s)) {
      const e = thrown(op, s, { dtypeOf: (k) => (k === i ? 'float64' : undefined) });
      expect({ input: i, type: e.constructor, message: e.message })
        .toEqual({ input: i, type: TypeError, message: expect.stringMatching(/ is float(32|64) but .* is float(32|64)/) });
      named(op, e.message);
    }
  });

  // A module's own tensors (weight, bias, A, B) can be replaced after construction: one in another
  // dtype or on another device is refused as a bad argument is, naming the op, before native code.
  const stateInputs = (s: OpSample) => s.inputs.flatMap((spec, i) => (spec.state ? [i] : []));
  const withState = withInputs.filter(([, , s]) => stateInputs(s).length > 0 && !s.separateInputs);
  test.each(withState)("%s: each of the module's own tensors in turn as int32, then as float64 among float32 inputs: a TypeError or RangeError naming the op", (_t, op, s) => {
    for (const i of stateInputs(s)) {
      const e = thrown(op, s, { dtypeOf: (k) => (k === i ? 'int32' : undefined) });
      expect({ input: i, type: e.constructor, message: e.message })
        .toEqual({ input: i, type: e instanceof TypeError ? TypeError : RangeError, message: expect.stringMatching(/int32/) });
      named(op, e.message);
      if (floatInputs(s).length < 2) continue;
      const e64 = thrown(op, s, { dtypeOf: (k) => (k === i ? 'float64' : undefined) });
      expect({ input: i, type: e64.constructor, message: e64.message })
        .toEqual({ input: i, type: TypeError, message: expect.stringMatching(/ is float(32|64) but .* is float(32|64)/) });
      named(op, e64.message);
    }
  });

  /** Inputs that must be on the device of the others. */
  const placed = (s: OpSample) => s.inputs.flatMap((spec, i) => (spec.anyDevice ? [] : [i]));
  const twoDevices = withInputs.filter(([, op, s]) => placed(s).length > 1 && !s.separateInputs && op.devices.includes('cuda'));
  (hasCuda ? test.each(twoDevices) : test.skip.each(twoDevices))('%s: each argument in turn on CUDA, the other inputs on the CPU: a RangeError naming both devices', (_t, op, s) => {
    for (const i of args(s).filter((k) => placed(s).includes(k))) {
      const e = thrown(op, s, { deviceOf: (k) => (k === i ? 'cuda' : undefined) });
      expect({ input: i, type: e.constructor, message: e.message })
        .toEqual({ input: i, type: RangeError, message: expect.stringMatching(/ is on (cpu|cuda:0) but .* is on (cpu|cuda:0)/) });
      named(op, e.message);
    }
  });

  const stateElsewhere = withState.filter(([, op, s]) => placed(s).length > 1 && op.devices.includes('cuda'));
  (hasCuda ? test.each(stateElsewhere) : test.skip.each(stateElsewhere))("%s: each of the module's own tensors in turn on CUDA, the other inputs on the CPU: a RangeError naming both devices", (_t, op, s) => {
    for (const i of stateInputs(s).filter((k) => placed(s).includes(k))) {
      const e = thrown(op, s, { deviceOf: (k) => (k === i ? 'cuda' : undefined) });
      expect({ input: i, type: e.constructor, message: e.message })
        .toEqual({ input: i, type: RangeError, message: expect.stringMatching(/ is on (cpu|cuda:0) but .* is on (cpu|cuda:0)/) });
      named(op, e.message);
    }
  });

  const hostRead = withInputs.filter(([, , s]) => s.inputs.some((spec) => spec.anyDevice));
  (hasCuda ? test.each(hostRead) : test.skip.each(hostRead))('%s: an input read on the host is taken from CUDA too, with the same result', (_t, op, s) => {
    const want = outputs(s.call(makeInputs(s, ctx, sampleSeed(op, s)), ctx)).map((o) => Array.from(o.toArray()));
    s.inputs.forEach((spec, i) => {
      if (!spec.anyDevice) return;
      const xs = makeInputs(s, ctx, sampleSeed(op, s), { deviceOf: (k) => (k === i ? 'cuda' : undefined) });
      expect(outputs(s.call(xs, ctx)).map((o) => Array.from(o.toArray()))).toEqual(want);
    });
  });
});

// ======================================================================== merging

describe('merging refuses without changing any weight', () => {
  test('a finite but huge B whose product with A overflows: mergeToOrig({ safe }) throws, W is bit-identical', () => {
    const lora = new LoRALinear(new Linear(4, 3), { r: 2, alpha: 2 });
    lora.A!.fill_(1e30);
    lora.B!.fill_(1e30); // scale * B A = 2e60: Inf in float32, though every input is finite
    const x = randn([5, 4]);
    const y = noGrad(() => lora.forward(x)).toArray();
    const w = bits(lora.origLinear.weight);
    const e = expectThrows(() => lora.mergeToOrig({ safe: true }), Error, /^LoRALinear\.mergeToOrig: the merged weight would contain NaN or Inf .*the weight is unchanged$/);
    expect(e.constructor).toBe(Error);
    expect(bits(lora.origLinear.weight)).toBe(w);
    expect(lora.merged).toBe(false);
    expect(noGrad(() => lora.forward(x)).toArray()).toEqual(y);
  });

  test('mergeLora({ safe }) over several layers: a later layer overflows, every weight stays bit-identical', () => {
    const model = loraModel();
    const bad = layer(model, 'layers.1.self_attn.k_proj');
    noGrad(() => {
      bad.A!.fill_(1e20);
      bad.B!.fill_(1e20);
    });
    const before = moduleState(model);
    expectThrows(() => mergeLora(model, { safe: true }), Error,
      /^mergeLora: layer 'layers\.1\.self_attn\.k_proj': the merged weight would contain NaN or Inf .*; no layer was merged$/);
    // Not merged and unmerged again (which is only equal up to rounding): never touched.
    expect(moduleState(model)).toEqual(before);
    // The check does not stop a good merge.
    noGrad(() => bad.B!.zero_());
    expect(mergeLora(model, { safe: true })).toHaveLength(6);
  });

  test('a disposed A or B fails mergeLora before any weight changes (safe or not), with its code', () => {
    // Every weight and adapter but the disposed one, bit for bit, and the merged flags.
    const live = (m: Module) => [...m.namedParameters()].filter(([, p]) => !p.isDisposed).map(([n, p]) => [n, bits(p)])
      .concat([...m.namedModules()].map(([n, x]) => [n, String(x instanceof LoRALinear && x.merged)]));
    for (const safe of [false, true]) {
      const model = loraModel();
      layer(model, 'layers.1.self_attn.v_proj').B!.dispose();
      const before = live(model);
      const e = caught(() => mergeLora(model, { safe }));
      expect(e.code).toBe('ERR_TENSOR_DISPOSED');
      expect(e.message).toMatch(/^mergeLora: layer 'layers\.1\.self_attn\.v_proj': mergeLora: tensor has been disposed; no layer was merged$/);
      expect(live(model)).toEqual(before);
    }
  });

  test('mergeToOrig with a disposed adapter: ERR_TENSOR_DISPOSED and merged unchanged; unmerging needs only the weight', () => {
    const a = new LoRALinear(new Linear(4, 3), { r: 2 });
    const w = bits(a.origLinear.weight);
    a.A!.dispose();
    expect(caught(() => a.mergeToOrig()).code).toBe('ERR_TENSOR_DISPOSED');
    expect(a.merged).toBe(false);
    expect(bits(a.origLinear.weight)).toBe(w);

    // Unmerging subtracts the copies of A and B made at the merge, so a disposed B does not block it.
    const b = new LoRALinear(new Linear(4, 3), { r: 2 });
    noGrad(() => b.B!.copy_(randn([3, 2])));
    const w0 = b.origLinear.weight.toArray();
    b.mergeToOrig();
    b.B!.dispose();
    b.unmergeFromOrig();
    expect(b.merged).toBe(false);
    const w1 = b.origLinear.weight.toArray();
    w0.forEach((v, i) => expect(Math.abs(w1[i] - v)).toBeLessThan(1e-6));

    const c = new LoRALinear(new Linear(4, 3), { r: 2 });
    c.mergeToOrig();
    c.origLinear.weight.dispose();
    expect(caught(() => c.unmergeFromOrig()).code).toBe('ERR_TENSOR_DISPOSED');
    expect(c.merged).toBe(true);
  });

  test('an A or B replaced by one of another dtype or shape: refused before native code, naming it, every weight unchanged', () => {
    const lora = new LoRALinear(new Linear(4, 3), { r: 2 });
    const w = bits(lora.origLinear.weight);
    lora.A = randn([2, 4], { dtype: 'float64' });
    expectThrows(() => lora.mergeToOrig(), TypeError, /^LoRALinear\.mergeToOrig: A is float64 but origLinear\.weight is float32; the adapters of a float32 layer must be float32$/);
    expect(lora.merged).toBe(false);
    expect(bits(lora.origLinear.weight)).toBe(w);

    // Unmerging subtracts the copies of A and B made at the merge: a B replaced since does not matter.
    const merged = new LoRALinear(new Linear(4, 3), { r: 2 });
    const w0 = bits(merged.origLinear.weight);
    merged.mergeToOrig();
    merged.B = zeros([3, 2], { dtype: 'float64' });
    merged.unmergeFromOrig();
    expect(merged.merged).toBe(false);
    expect(bits(merged.origLinear.weight)).toBe(w0); // B was zero when merged: W + 0 - 0

    for (const safe of [false, true]) {
      const model = loraModel();
      layer(model, 'layers.1.self_attn.k_proj').B = zeros([2, 8]);
      const before = moduleState(model);
      expectThrows(() => mergeLora(model, { safe }), Error,
        /^mergeLora: layer 'layers\.1\.self_attn\.k_proj': mergeLora: B must be a 2-D tensor of shape \[8, 2\] \(\[outFeatures, r\]\), got Tensor\(shape \[2, 8\], float32, cpu\); no layer was merged$/);
      expect(moduleState(model)).toEqual(before);
    }
  });

  test('mergeLora, unmergeLora and withAdaptersDisabled name themselves for a model that is not a Module', () => {
    expectThrows(() => mergeLora('model' as unknown as Module), TypeError, /^mergeLora: model must be a Module, got "model"$/);
    expectThrows(() => unmergeLora(null as unknown as Module), TypeError, /^unmergeLora: model must be a Module, got null$/);
    expectThrows(() => withAdaptersDisabled({} as Module, () => 1), TypeError, /^withAdaptersDisabled: model must be a Module, got an instance of Object$/);
  });
});

// ====================================================================== optimiser

describe('Adam.step checks every group and gradient before changing anything', () => {
  function setup(): { opt: Adam; p: Tensor; q: Tensor } {
    manualSeed(5);
    const p = randn([3]).requiresGrad_(true);
    const q = randn([2, 2]).requiresGrad_(true);
    const opt = new AdamW([{ params: [p] }, { params: [q], lr: 0.1 }]);
    p.mul(randn([3])).sum().backward();
    q.mul(randn([2, 2])).sum().backward();
    opt.step(); // some state to keep
    p.mul(randn([3])).sum().backward();
    q.mul(randn([2, 2])).sum().backward();
    return { opt, p, q };
  }

  // Options are public and may be edited between steps (a schedule); the constructor's checks no longer hold.
  test.each<[string, (o: Adam) => void, typeof RangeError | typeof TypeError, RegExp]>([
    ['betas edited out of range', (o) => { o.paramGroups[1].betas = [2, 0.999]; }, RangeError, /^AdamW\.step: paramGroups\[1\]\.betas\[0\] must be in \[0, 1\), got 2$/],
    ['betas NaN', (o) => { o.paramGroups[1].betas = [0.9, NaN]; }, RangeError, /^AdamW\.step: paramGroups\[1\]\.betas\[1\] must be a finite number, got NaN$/],
    ['betas not a pair', (o) => { o.paramGroups[0].betas = [0.9] as unknown as [number, number]; }, TypeError, /^AdamW\.step: paramGroups\[0\]\.betas must be a pair \[beta1, beta2\], got \[0\.9\]$/],
    ['eps negative', (o) => { o.paramGroups[1].eps = -1; }, RangeError, /^AdamW\.step: paramGroups\[1\]\.eps must be >= 0, got -1$/],
    ['weightDecay Infinity', (o) => { o.paramGroups[1].weightDecay = Infinity; }, RangeError, /^AdamW\.step: paramGroups\[1\]\.weightDecay must be a finite number, got Infinity$/],
    ['lr NaN in the second group', (o) => { o.paramGroups[1].lr = NaN; }, RangeError, /^AdamW\.step: paramGroups\[1\]\.lr must be a finite number, got NaN$/],
    ['amsgrad not a boolean', (o) => { (o.paramGroups[1] as { amsgrad: unknown }).amsgrad = 'yes'; }, TypeError, /^AdamW\.step: paramGroups\[1\]\.amsgrad must be a boolean, got "yes"$/],
  ])('%s: a clear error, and neither group is stepped', (_name, edit, type, re) => {
    const { opt } = setup();
    edit(opt);
    const before = optimizerState(opt);
    expectThrows(() => opt.step(), type, re);
    expect(optimizerState(opt)).toEqual(before);
  });

  test('a disposed gradient of the second group: ERR_TENSOR_DISPOSED, the first group is not stepped either', () => {
    const { opt, q } = setup();
    q.grad!.dispose();
    const before = optimizerState(opt);
    expect(caught(() => opt.step()).code).toBe('ERR_TENSOR_DISPOSED');
    expect(optimizerState(opt)).toEqual(before);
  });

  test('a parameter that never had state gets none from a failed step', () => {
    const p = randn([2]).requiresGrad_(true);
    const q = randn([2]).requiresGrad_(true);
    const opt = new Adam([{ params: [p] }, { params: [q] }]);
    p.sum().backward();
    q.sum().backward();
    opt.paramGroups[1].eps = NaN;
    const before = [bits(p), bits(q)];
    expect(() => opt.step()).toThrow(RangeError);
    expect(opt.state.size).toBe(0);
    expect([bits(p), bits(q)]).toEqual(before);
    opt.paramGroups[1].eps = 1e-8;
    opt.step();
    expect(opt.state.size).toBe(2);
  });
});

describe('what changes optimiser state in bulk checks every tensor first, under its own name', () => {
  test('zeroGrad(false) with a disposed gradient: Adam.zeroGrad names itself, no gradient is zeroed', () => {
    const p = randn([3]).requiresGrad_(true);
    const q = randn([2]).requiresGrad_(true);
    const opt = new Adam([{ params: [p] }, { params: [q] }]);
    p.mul(p).sum().backward();
    q.mul(q).sum().backward();
    q.grad!.dispose();
    const g = bits(p.grad!);
    const e = caught(() => opt.zeroGrad(false));
    expect({ code: e.code, message: e.message }).toEqual({ code: 'ERR_TENSOR_DISPOSED', message: 'Adam.zeroGrad: a gradient has been disposed' });
    expect(bits(p.grad!)).toBe(g);
  });

  test('loadStateDict with a disposed state tensor: refused before the state is cleared', () => {
    const p = randn([3]).requiresGrad_(true);
    const opt = new AdamW([p]);
    p.mul(p).sum().backward();
    opt.step();
    const sd = opt.stateDict();
    sd.state[0].expAvgSq.dispose();
    const before = optimizerState(opt);
    const e = caught(() => opt.loadStateDict(sd));
    expect({ code: e.code, message: e.message }).toEqual({ code: 'ERR_TENSOR_DISPOSED', message: 'AdamW.loadStateDict: a tensor of state[0] has been disposed' });
    expect(optimizerState(opt)).toEqual(before);
  });
});

// ===================================================================== generator

describe('setRngState refuses what the native generator cannot hold', () => {
  test.each<[string, { seed: bigint; offset: bigint }, RegExp]>([
    ['a negative seed', { seed: -1n, offset: 0n }, /^setRngState: state\.seed must be in \[0, 2\^64\), got -1$/],
    ['a seed of 2^64', { seed: 1n << 64n, offset: 0n }, /^setRngState: state\.seed must be in \[0, 2\^64\), got 18446744073709551616$/],
    ['a negative offset', { seed: 1n, offset: -5n }, /^setRngState: state\.offset must be in \[0, 2\^64\), got -5$/],
  ])('%s', (_name, state, re) => {
    manualSeed(9);
    randn([2]);
    const before = getRngState();
    expectThrows(() => setRngState(state), RangeError, re);
    expect(getRngState()).toEqual(before);
  });
});

// ================================================================ native values

describe('values an int32 tensor cannot hold are refused (converting them is undefined behaviour)', () => {
  test.each([NaN, Infinity, -Infinity, 2 ** 31, -(2 ** 31) - 1, 1e300])('fill_(%p) on an int32 tensor: an Error, the values unchanged', (v) => {
    const t = tensor([7, -7], { dtype: 'int32' });
    const e = caught(() => t.fill_(v));
    expect(e).toBeInstanceOf(RangeError);
    expect(e.message).toMatch(/^Tensor\.fill_: value must be a number an int32 tensor can hold \(integers in \[-2147483648, 2147483647\]\)/);
    expect(Array.from(t.toArray())).toEqual([7, -7]);
    expect(caught(() => full([2], v, { dtype: 'int32' })).message).toMatch(/^full: value must be a number an int32 tensor can hold/);
  });

  const INT32 = 'must be an integer in [-2147483648, 2147483647] (int32 tensor)';

  test('tensor() refuses data outside int32 instead of wrapping it, naming the element and its value', () => {
    const cases: [unknown, string, string][] = [
      [[3e9], 'data[0]', '3000000000'],
      [[1, 2 ** 32 + 3], 'data[1]', '4294967299'], // a token id that would read as 3
      [[[1, 2], [3, -(2 ** 31) - 1]], 'data[1][1]', '-2147483649'],
      [2 ** 32 + 1, 'data[0]', '4294967297'],
      [new Float64Array([0, 0, 2 ** 32 + 3]), 'data[2]', '4294967299'],
      [new Uint32Array([5, 2 ** 32 - 1]), 'data[1]', '4294967295'],
      [new Float32Array([2 ** 31]), 'data[0]', '2147483648'],
      [new BigInt64Array([2n ** 32n + 3n]), 'data[0]', '4294967299'],
      [[1.5], 'data[0]', '1.5'],
    ];
    for (const [data, what, got] of cases) {
      const e = caught(() => tensor(data as number[], { dtype: 'int32' }));
      expect(e).toBeInstanceOf(RangeError);
      expect(e.message).toBe(`tensor: ${what} ${INT32}, got ${got}`);
    }
    // The ends of the range are kept exactly.
    const ends = [-(2 ** 31), 2 ** 31 - 1];
    expect(Array.from(tensor(ends, { dtype: 'int32' }).toArray())).toEqual(ends);
    expect(Array.from(tensor(new Float64Array(ends), { dtype: 'int32' }).toArray())).toEqual(ends);
    expect(Array.from(tensor(new Uint32Array([0, 2 ** 31 - 1]), { dtype: 'int32' }).toArray())).toEqual([0, 2 ** 31 - 1]);
  });

  test('copy_ from an array refuses values outside int32 and writes nothing', () => {
    const t = tensor([7, -7], { dtype: 'int32' });
    for (const [src, what, got] of [
      [[1, 2 ** 32 + 1], 'src[1]', '4294967297'], // a class that would read as 1
      [new Float64Array([-(2 ** 33), 0]), 'src[0]', '-8589934592'],
      [new Uint32Array([0, 2 ** 31]), 'src[1]', '2147483648'],
    ] as [ArrayLike<number>, string, string][]) {
      const e = caught(() => t.copy_(src));
      expect(e).toBeInstanceOf(RangeError);
      expect(e.message).toBe(`Tensor.copy_: ${what} ${INT32}, got ${got}`);
      expect(Array.from(t.toArray())).toEqual([7, -7]);
    }
  });

  test('copy_ and to() from a float tensor: NaN, Inf and out-of-range values are refused before anything is written', () => {
    const t = tensor([1, 2, 3], { dtype: 'int32' });
    for (const [bad, index, value] of [[[0, 1e10, 2], 1, '10000000000'], [[0, 1, NaN], 2, 'NaN'], [[-Infinity, 0, 0], 0, '-Infinity'],
      [[0, 2 ** 32 + 3, 0], 1, '4294967299']] as [number[], number, string][]) {
      const message = `copy: element ${index} (${value}) cannot be converted to int32 (integers in [-2147483648, 2147483647])`;
      for (const e of [caught(() => t.copy_(tensor(bad, { dtype: 'float64' }))), caught(() => tensor(bad, { dtype: 'float64' }).to('int32'))]) {
        // A RangeError of the addon's realm.
        expect({ name: e.name, code: e.code, message: e.message }).toEqual({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message });
      }
      expect(Array.from(t.toArray())).toEqual([1, 2, 3]);
    }
    // float32 values as they are stored, printed as JS prints them.
    for (const v of [3e9, 1e30]) {
      expect(caught(() => t.copy_(tensor([0.5, v, 0]))).message)
        .toBe(`copy: element 1 (${Math.fround(v)}) cannot be converted to int32 (integers in [-2147483648, 2147483647])`);
    }
    // In range, float to int32 truncates toward zero, as a C cast (and torch) does.
    expect(Array.from(tensor([1.9, -1.9, 2147483647.5, -2147483648.5], { dtype: 'float64' }).to('int32').toArray()))
      .toEqual([1, -1, 2147483647, -2147483648]);
    expect(Array.from(t.fill_(-2147483648).toArray())).toEqual([-2147483648, -2147483648, -2147483648]);
  });

  test('the binding itself refuses integer arguments that are NaN, infinite or beyond int64', () => {
    // Every public function checks these first; the binding must not convert them regardless
    // (found by UBSan: static_cast<int64_t>(NaN)).
    for (const d of [NaN, Infinity, -Infinity, 1e300]) {
      expect(caught(() => native.full([d], 0, 0, 0, 0)).message).toBe('shape must be an integer');
    }
    expect(caught(() => native.embeddingBackward(native.full([1], 2, 0, 0, 0), null, native.full([1, 2], 0, 0, 0, 0), NaN)).message)
      .toBe('numEmbeddings must be an integer');
  });
});

// ==================================================================== Llama

describe('LlamaForCausalLM', () => {
  const config = { model_type: 'llama', hidden_size: 8, num_attention_heads: 2, vocab_size: 5, intermediate_size: 4, num_hidden_layers: 1 };

  test.each<[string, number[][], RegExp]>([
    ['NaN at position 0 (which nothing predicts)', [[NaN, 1, 2]], /^LlamaForCausalLM\.loss: labels\[0\]\[0\] must be a token id in \[0, 5\) or -100 \(ignored\), got NaN$/],
    ['a fraction', [[1, 1.5, 2]], /labels\[0\]\[1\] must be a token id in \[0, 5\) or -100 \(ignored\), got 1\.5$/],
    ['vocab_size itself', [[1, 2, 5]], /labels\[0\]\[2\] must be .*, got 5$/],
    ['-1 (only -100 is ignored)', [[1, -1, 2]], /labels\[0\]\[1\] must be .*, got -1$/],
  ])('loss() labels with %s: a RangeError naming the label', (_name, labels, re) => {
    manualSeed(0);
    const model = new LlamaForCausalLM(config);
    const before = moduleState(model);
    expectThrows(() => model.loss([[1, 2, 3]], labels), RangeError, re);
    expect(moduleState(model)).toEqual(before);
  });

  test('loss() labels as an int32 tensor are checked the same way', () => {
    manualSeed(0);
    const model = new LlamaForCausalLM(config);
    expectThrows(() => model.loss([[1, 2, 3]], tensor([[1, 2, 7]], { dtype: 'int32' })), RangeError,
      /^LlamaForCausalLM\.loss: labels\[0\]\[2\] must be a token id in \[0, 5\) or -100 \(ignored\), got 7$/);
    expect(model.loss([[1, 2, 3]], tensor([[-100, 2, -100]], { dtype: 'int32' })).item()).toBeGreaterThan(0);
  });

  test('token ids as an int32 tensor are checked by forward() and loss() themselves, not by the embedding', () => {
    manualSeed(0);
    const model = new LlamaForCausalLM(config);
    const before = moduleState(model);
    const ids = tensor([[1, 5, 2]], { dtype: 'int32' });
    expectThrows(() => model.forward(ids), RangeError, /^LlamaForCausalLM\.forward: inputIds\[0\]\[1\] must be a token id in \[0, 5\), got 5$/);
    expectThrows(() => model.loss(ids), RangeError, /^LlamaForCausalLM\.loss: inputIds\[0\]\[1\] must be a token id in \[0, 5\), got 5$/);
    ids.dispose();
    for (const [where, call] of [['forward', () => model.forward(ids)], ['loss', () => model.loss(ids)]] as const) {
      const e = caught(call);
      expect({ code: e.code, message: e.message }).toEqual({ code: 'ERR_TENSOR_DISPOSED', message: `LlamaForCausalLM.${where}: inputIds has been disposed` });
    }
    const labels = tensor([[1, 2, 3]], { dtype: 'int32' });
    labels.dispose();
    expect(caught(() => model.loss([[1, 2, 3]], labels)).message).toBe('LlamaForCausalLM.loss: labels has been disposed');
    expect(moduleState(model)).toEqual(before);
  });

  test('fromPretrained checks its options before reading anything', async () => {
    await expect(LlamaForCausalLM.fromPretrained(path.join(tmp, 'nowhere'), { dtype: 'int32' as 'float32' })).rejects.toThrow(
      /^LlamaForCausalLM\.fromPretrained: options\.dtype must be one of "auto", "float32", "float64", "bfloat16", "float16", got "int32"$/);
  });

  test('parseLlamaConfig: rope_scaling numbers must be numbers, sizes exact integers', () => {
    const rope = (rs: unknown) => () => parseLlamaConfig({ ...config, rope_scaling: rs });
    expectThrows(rope({ rope_type: 'linear', factor: '2' }), RangeError, /^parseLlamaConfig: config\.rope_scaling\.factor must be a positive number, got "2"$/);
    expectThrows(rope({ rope_type: 'linear', factor: [2] }), RangeError, /config\.rope_scaling\.factor must be a positive number, got \[2\]$/);
    expectThrows(rope({ rope_type: 'linear', factor: 1e999 }), RangeError, /config\.rope_scaling\.factor must be a positive number, got Infinity$/);
    expectThrows(rope('linear'), RangeError, /^parseLlamaConfig: config\.rope_scaling must be an object or null, got "linear"$/);
    expectThrows(rope({ rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: '16' }), RangeError,
      /^parseLlamaConfig: config\.rope_scaling must be llama3 scaling with positive/);
    expectThrows(() => parseLlamaConfig({ ...config, vocab_size: 2 ** 53 }), RangeError,
      /^parseLlamaConfig: config\.vocab_size must be a positive integer \(at most 2\^53 - 1\), got 9007199254740992$/);
    expectThrows(() => parseLlamaConfig({ ...config, model_type: 'toString' }), RangeError, /^parseLlamaConfig: unsupported architecture "toString"/);
    expect(parseLlamaConfig({ ...config, architectures: ['constructor', 'MistralForCausalLM'] }).modelType).toBe('mistral');
  });
});

// ================================================================= modules

describe('Module methods that change every tensor check them all first, under their own name', () => {
  /** A module with an int32 tensor among its parameters (a tensor property that is not a buffer). */
  class WithIds extends Module {
    w = zeros([2]);
    ids = tensor([1, 2], { dtype: 'int32' });
    forward(): Tensor {
      return this.w;
    }
  }

  test('requiresGrad_(true) over an int32 parameter: names the parameter, no parameter changes', () => {
    const m = new WithIds();
    expectThrows(() => m.requiresGrad_(true), RangeError,
      /^Module\.requiresGrad_: the dtype of parameter 'ids' must be a float dtype \(float32, float64, bfloat16 or float16\) for a tensor that requires grad, got "int32"$/);
    expect(m.w.requiresGrad).toBe(false);
    expect(m.requiresGrad_(false).w.requiresGrad).toBe(false);
  });

  test('requiresGrad_ over a parameter that is not a leaf: names it', () => {
    const m = new WithIds();
    m.w = randn([2], { requiresGrad: true }).mul(2);
    expectThrows(() => m.requiresGrad_(false), Error,
      /^Module\.requiresGrad_: only leaf tensors can change requiresGrad \(parameter 'w' is not one\); use detach\(\) for a non-leaf$/);
  });

  test('zeroGrad(false) with a disposed gradient: Module.zeroGrad names itself, no gradient is zeroed', () => {
    const lin = new Linear(3, 2);
    lin.forward(randn([4, 3])).sum().backward();
    lin.bias!.grad!.dispose();
    const g = bits(lin.weight.grad!);
    const e = caught(() => lin.zeroGrad(false));
    expect({ code: e.code, message: e.message }).toEqual({ code: 'ERR_TENSOR_DISPOSED', message: 'Module.zeroGrad: a gradient has been disposed' });
    expect(bits(lin.weight.grad!)).toBe(g);
  });

  test('stateDict and loadStateDict with a disposed parameter name it; loadStateDict writes nothing', () => {
    const model = loraModel();
    layer(model, 'layers.0.self_attn.q_proj').origLinear.bias!.dispose();
    const e = caught(() => model.stateDict());
    expect({ code: e.code, message: e.message })
      .toEqual({ code: 'ERR_TENSOR_DISPOSED', message: "Module.stateDict: 'layers.0.self_attn.q_proj.origLinear.bias' has been disposed" });
    const k = layer(model, 'layers.0.self_attn.k_proj').origLinear.weight;
    const w = bits(k);
    expectThrows(() => model.loadStateDict(loraModel(4).stateDict()), RangeError,
      /^Module\.loadStateDict: the module's 'layers\.0\.self_attn\.q_proj\.origLinear\.bias' has been disposed$/);
    expect(bits(k)).toBe(w);
  });

  test('saveAdapter and saveMerged with a disposed tensor name themselves and the tensor, and write nothing', async () => {
    const model = loraModel();
    layer(model, 'layers.1.self_attn.v_proj').B!.dispose();
    const dir = path.join(tmp, 'disposed-save');
    await expect(saveAdapter(model, dir)).rejects.toThrow(/^saveAdapter: layer 'layers\.1\.self_attn\.v_proj': B has been disposed$/);
    await expect(saveMerged(model, dir)).rejects.toThrow(/^saveMerged: 'layers\.1\.self_attn\.v_proj\.B' has been disposed$/);
    expect(fs.existsSync(dir)).toBe(false);
  });
});

// ================================================================ adapters

describe('loadAdapter refuses adapters that do not fit, leaving the model as it was', () => {
  const A = (name: string) => `base_model.model.${name}.lora_A.weight`;
  const B = (name: string) => `base_model.model.${name}.lora_B.weight`;
  let dir: string;
  let good: Record<string, Tensor>;

  beforeAll(async () => {
    dir = path.join(tmp, 'adapter');
    await saveAdapter(loraModel(), dir);
    const st = SafetensorsFile.openSync(path.join(dir, 'adapter_model.safetensors'));
    good = Object.fromEntries(st.keys().map((k) => [k, st.readSync(k)]));
    st.close();
  });

  /** A copy of the adapter with other weights and/or config. */
  async function variant(label: string, edit: { tensors?: (t: Record<string, Tensor>) => void; config?: (c: Record<string, unknown>) => void; metadata?: Record<string, string> }): Promise<string> {
    const d = path.join(tmp, `adapter-${label}`);
    fs.mkdirSync(d, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    edit.config?.(cfg);
    fs.writeFileSync(path.join(d, 'adapter_config.json'), JSON.stringify(cfg));
    const tensors = { ...good };
    edit.tensors?.(tensors);
    const recorded = SafetensorsFile.openSync(path.join(dir, 'adapter_model.safetensors'));
    const metadata = edit.metadata ?? recorded.metadata;
    recorded.close();
    await saveSafetensors(path.join(d, 'adapter_model.safetensors'), tensors, { metadata });
    return d;
  }

  async function refused(model: Module, d: string, re: RegExp): Promise<void> {
    const before = moduleState(model);
    await expect(loadAdapter(model, d)).rejects.toThrow(re);
    expect(moduleState(model)).toEqual(before);
  }

  const fresh = () => {
    manualSeed(3);
    return new ToyTransformer(8, 2);
  };

  test('NaN or Inf in A or B', async () => {
    const q = 'layers.1.self_attn.q_proj';
    const d = await variant('nan', { tensors: (t) => { t[B(q)] = full([8, 2], Infinity); } });
    await refused(fresh(), d, new RegExp(`^loadAdapter: adapter_model\\.safetensors: '${B(q).replace(/\./g, '\\.')}' holds NaN or Inf$`));
    const e = await variant('nan-a', { tensors: (t) => { t[A(q)] = tensor(new Float32Array(16).fill(NaN), { shape: [2, 8] }); } });
    await refused(fresh(), e, /lora_A\.weight' holds NaN or Inf$/);
  });

  test('a weights file that is not a safetensors file: a SafetensorsError naming loadAdapter', async () => {
    const d = await variant('truncated', {});
    const file = path.join(d, 'adapter_model.safetensors');
    fs.writeFileSync(file, fs.readFileSync(file).subarray(0, 20));
    await refused(fresh(), d, new RegExp(`^loadAdapter: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not a valid safetensors file: `));
    await expect(loadAdapter(fresh(), d)).rejects.toMatchObject({ code: 'ERR_SAFETENSORS_INVALID' });
  });

  test('two A weights for one layer (PEFT names an adapter "default": lora_A.default.weight)', async () => {
    const q = 'layers.0.self_attn.q_proj';
    const d = await variant('dup', { tensors: (t) => { t[`base_model.model.${q}.lora_A.default.weight`] = randn([2, 8]); } });
    await refused(fresh(), d, /^loadAdapter: adapter_model\.safetensors has two lora_A weights for 'layers\.0\.self_attn\.q_proj': /);
  });

  test('a config that is not the one the weights were saved with (e.g. a save interrupted between the two files)', async () => {
    const d = await variant('alpha', { config: (c) => { c.lora_alpha = 32; } });
    await refused(fresh(), d, /^loadAdapter: adapter_config\.json does not belong to adapter_model\.safetensors: the weights were saved with \{"r":2,"lora_alpha":4,.*\}, the config says \{"r":2,"lora_alpha":32,.*\} \(was a save interrupted between the two files\? save the adapter again\)$/);
    // Weights without the record (as Python's PEFT writes them) are taken as the config says.
    const peft = await variant('alpha-peft', { config: (c) => { c.lora_alpha = 32; }, metadata: { format: 'pt' } });
    const model = fresh();
    expect(await loadAdapter(model, peft)).toHaveLength(6);
    expect(layer(model, 'layers.0.self_attn.q_proj').scale).toBe(16);
  });

  test('into layers that are LoRALinear already: merged, or with another lora_alpha', async () => {
    const merged = loraModel();
    mergeLora(merged);
    await refused(merged, dir, /^loadAdapter: 'layers\.0\.self_attn\.k_proj' is a LoRALinear whose adapter is merged into its weight; call unmergeLora\(model\) first$/);
    const other = fresh();
    injectLora(other, { r: 2, alpha: 2, filter: qkvFilter });
    await refused(other, dir, /^loadAdapter: 'layers\.0\.self_attn\.k_proj' is already a LoRALinear with lora_alpha=2, use_rslora=false; the adapter has lora_alpha=4, use_rslora=false$/);
    // Same r and alpha: the adapter's values are loaded into the existing layers.
    const same = fresh();
    injectLora(same, { r: 2, alpha: 4, filter: qkvFilter });
    expect(await loadAdapter(same, dir)).toHaveLength(6);
    expect(bits(layer(same, 'layers.1.self_attn.v_proj').B!)).toBe(bits(good[B('layers.1.self_attn.v_proj')]));
  });

  test('target_modules that is not a valid regular expression', async () => {
    const d = await variant('regex', { config: (c) => { c.target_modules = 'q_proj|(v_proj'; }, metadata: { format: 'pt' } });
    await refused(fresh(), d, /^loadAdapter: adapter_config\.json: target_modules "q_proj\|\(v_proj" is not a valid regular expression \(Invalid regular expression: .*\)$/);
  });

  test('arguments', async () => {
    await expect(loadAdapter({} as Module, dir)).rejects.toThrow(/^loadAdapter: model must be a Module, got an instance of Object$/);
    await expect(loadAdapter(fresh(), 5 as unknown as string)).rejects.toThrow(/^loadAdapter: dir must be a directory path, got 5$/);
    await expect(saveAdapter(fresh(), dir)).rejects.toThrow(/^saveAdapter: the model has no LoRA layers with r > 0 \(call injectLora first\)$/);
  });
});

// ================================================================== devices

describe('tensors and modules on another device', () => {
  if (!cuda.isAvailable()) {
    test.skip(`skipped: CUDA is not available (${backendInfo().cuda.reason})`, () => undefined);
    return;
  }

  test('a CUDA LoRALinear given a CPU input, and the reverse: a RangeError naming both devices, nothing changed', () => {
    manualSeed(1);
    const gpu = new LoRALinear(new Linear(4, 3, { device: 'cuda' }), { r: 2 });
    const before = moduleState(gpu);
    expectThrows(() => gpu.forward(zeros([2, 4])), RangeError, /^LoRALinear\.forward: x is on cpu but origLinear\.weight is on cuda:0; move one with \.to\(\)$/);
    const cpu = new LoRALinear(new Linear(4, 3), { r: 2 });
    expectThrows(() => cpu.forward(zeros([2, 4], { device: 'cuda' })), RangeError, /^LoRALinear\.forward: x is on cuda:0 but origLinear\.weight is on cpu/);
    expect(moduleState(gpu)).toEqual(before);
  });

  test('Module.to with a disposed parameter names it, and moves nothing', () => {
    const model = loraModel();
    layer(model, 'layers.1.self_attn.v_proj').A!.dispose();
    const e = caught(() => model.to('cuda'));
    expect({ code: e.code, message: e.message }).toEqual({ code: 'ERR_TENSOR_DISPOSED', message: "Module.to: 'layers.1.self_attn.v_proj.A' has been disposed" });
    expect([...model.parameters()].every((p) => p.device === 'cpu')).toBe(true);
  });

  test('an adapter loaded into a CUDA model lands on the GPU; binary ops across devices are refused', async () => {
    const dir = path.join(tmp, 'adapter-cuda');
    await saveAdapter(loraModel(), dir);
    const model = new ToyTransformer(8, 2).to('cuda');
    await loadAdapter(model, dir);
    expect(layer(model, 'layers.0.self_attn.q_proj').A!.device).toBe('cuda:0');
    expectThrows(() => zeros([2]).add(zeros([2], { device: 'cuda' })), RangeError, /^Tensor\.add: this is on cpu but other is on cuda:0/);
  });
});
