// The optimiser's whole state, in memory (stateDict / loadStateDict) and in files
// (saveOptimizerState / loadOptimizerState): every field survives, so a run restored from it continues
// bit for bit, and an incomplete or foreign state is refused before anything changes.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Adam, AdamW, Tensor, loadOptimizerState, manualSeed, randn, saveOptimizerState, saveSafetensors, SafetensorsFile,
} from '../lib';
import type { AdamStateDict } from '../lib';
import { bits } from './helpers/state';
import { expectThrows } from './helpers/expect-throws';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-optim-state-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function setGrad(p: Tensor, g: Tensor): void {
  p.mul(g).sum().backward();
}

/** Two groups with every option different from the defaults, one float32 and one float64 parameter each. */
function make(values: Tensor[], Opt: typeof Adam = AdamW): { ps: Tensor[]; opt: Adam } {
  const ps = values.map((v) => v.detach().clone().requiresGrad_(true));
  const opt = new Opt([
    { params: [ps[0], ps[1]], lr: 0.03, betas: [0.8, 0.95], eps: 1e-6, weightDecay: 0.1, amsgrad: true },
    { params: [ps[2]], lr: 0.01, amsgrad: false },
  ], { weightDecay: 0.02 });
  return { ps, opt };
}

function fixture(): { init: Tensor[]; grads: Tensor[][] } {
  manualSeed(5);
  const init = [randn([3, 4]), randn([5], { dtype: 'float64' }), randn([2, 2])];
  // Gradients that shrink and grow, so that amsgrad's running maximum differs from exp_avg_sq.
  const grads = Array.from({ length: 8 }, (_, s) => init.map((t) => randn(t.shape, { dtype: t.dtype }).mul(s % 3 === 0 ? 5 : 0.2)));
  return { init, grads };
}

/** A file's tensors in their stored dtype, and its metadata. */
async function readRaw(file: string): Promise<{ tensors: Record<string, Tensor>; metadata: Record<string, string> }> {
  const st = await SafetensorsFile.open(file);
  try {
    const tensors: Record<string, Tensor> = {};
    for (const k of st.keys()) tensors[k] = await st.read(k, { dtype: st.entry(k).dtype === 'F64' ? 'float64' : 'float32' });
    return { tensors, metadata: st.metadata };
  } finally {
    st.close();
  }
}

function steps(ps: Tensor[], opt: Adam, grads: Tensor[][], from: number, to: number): void {
  for (let s = from; s < to; s++) {
    ps.forEach((p, i) => setGrad(p, grads[s][i]));
    opt.step();
    opt.zeroGrad();
  }
}

test('stateDict carries every field: step counts, both moments, amsgrad\'s maximum and every group option', () => {
  const { init, grads } = fixture();
  const { ps, opt } = make(init);
  steps(ps, opt, grads, 0, 2);
  const sd = opt.stateDict();
  expect(Object.keys(sd.state)).toEqual(['0', '1', '2']);
  expect(Object.values(sd.state).map((s) => [s.step, !!s.expAvg, !!s.expAvgSq, !!s.maxExpAvgSq])).toEqual([
    [2, true, true, true], [2, true, true, true], [2, true, true, false],
  ]);
  expect(bits(sd.state[0].maxExpAvgSq!)).not.toBe(bits(sd.state[0].expAvgSq)); // a real maximum, not a copy
  expect(sd.paramGroups).toEqual([
    { lr: 0.03, betas: [0.8, 0.95], eps: 1e-6, weightDecay: 0.1, amsgrad: true, numParams: 2 },
    { lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.02, amsgrad: false, numParams: 1 },
  ]);
});

describe('saveOptimizerState / loadOptimizerState', () => {
  test('an amsgrad run saved to a file and restored into a fresh optimiser ends bit-identical to an uninterrupted one', async () => {
    const { init, grads } = fixture();
    const straight = make(init);
    steps(straight.ps, straight.opt, grads, 0, 8);

    const first = make(init);
    steps(first.ps, first.opt, grads, 0, 3);
    const file = path.join(tmp, 'resume.safetensors');
    await saveOptimizerState(first.opt, file);
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // A new process, in effect: new parameters with the values reached, a new optimiser, the file.
    const second = make(first.ps);
    second.opt.paramGroups[0].lr = 99; // restored from the file too
    await loadOptimizerState(second.opt, file);
    expect(second.opt.paramGroups[0].lr).toBe(0.03);
    steps(second.ps, second.opt, grads, 3, 8);
    second.ps.forEach((p, i) => expect(bits(p)).toBe(bits(straight.ps[i])));

    // Dropping amsgrad's maximum from the file (what checkpoints used to do) is refused, not resumed
    // with the maximum restarted from zero (which ends elsewhere).
    const { tensors, metadata } = await readRaw(file);
    const dropped = path.join(tmp, 'dropped.safetensors');
    const { ['state.0.max_exp_avg_sq']: _gone, ...rest } = tensors;
    await saveSafetensors(dropped, rest, { metadata });
    const third = make(first.ps);
    const before = third.opt.stateDict();
    await expect(loadOptimizerState(third.opt, dropped)).rejects.toThrow(
      /^loadOptimizerState: .*dropped\.safetensors: AdamW\.loadStateDict: state\[0\] has no maxExpAvgSq, which amsgrad needs \(paramGroups\[0\]\.amsgrad is true\)$/);
    expect(third.opt.stateDict()).toEqual(before);
    expect(third.opt.state.size).toBe(0);
  });

  test('a state before any step (no tensors) round-trips', async () => {
    const { init } = fixture();
    const a = make(init, Adam);
    const file = path.join(tmp, 'empty.safetensors');
    await saveOptimizerState(a.opt, file);
    const b = make(init, Adam);
    b.opt.paramGroups[1].eps = 0.5;
    await loadOptimizerState(b.opt, file);
    expect(b.opt.stateDict()).toEqual(a.opt.stateDict());
  });

  test('incomplete, extra, misshapen or foreign states are refused before the optimiser changes', async () => {
    const { init, grads } = fixture();
    const { ps, opt } = make(init);
    steps(ps, opt, grads, 0, 1);
    const file = path.join(tmp, 'good.safetensors');
    await saveOptimizerState(opt, file);
    const { tensors: raw, metadata } = await readRaw(file);
    const variant = async (name: string, t: Record<string, Tensor>, meta: Record<string, string> = metadata) => {
      const f = path.join(tmp, `${name}.safetensors`);
      await saveSafetensors(f, t, { metadata: meta });
      return f;
    };
    const scalars = JSON.parse(metadata['lora_cuda.optimizer']);
    const target = make(init);
    const check = async (f: string, re: RegExp) => {
      const before = target.opt.stateDict();
      await expect(loadOptimizerState(target.opt, f)).rejects.toThrow(re);
      expect(target.opt.stateDict()).toEqual(before);
    };
    const { ['state.1.exp_avg_sq']: _v, ...noSq } = raw;
    await check(await variant('no-sq', noSq), /no tensor "state\.1\.exp_avg_sq": the state of parameter 1 is incomplete/);
    await check(await variant('extra', { ...raw, 'state.7.exp_avg': randn([1]) }), /tensors that belong to no stepped parameter: state\.7\.exp_avg/);
    await check(await variant('shape', { ...raw, 'state.2.exp_avg': randn([4]) }), /"state\.2\.exp_avg" has shape \[4\], parameter 2 has \[2, 2\]/);
    await check(await variant('dtype', { ...raw, 'state.1.exp_avg': randn([5]) }), /"state\.1\.exp_avg" is F32, parameter 1 is float64/);
    await check(await variant('adam', raw, { 'lora_cuda.optimizer': JSON.stringify({ ...scalars, optimizer: 'Adam' }) }), /it holds the state of "Adam", this optimiser is AdamW/);
    await check(await variant('no-meta', raw, {}), /no "lora_cuda\.optimizer" metadata: not an optimiser state written by saveOptimizerState/);
    await check(await variant('groups', raw, {
      'lora_cuda.optimizer': JSON.stringify({ ...scalars, paramGroups: [scalars.paramGroups[0], { ...scalars.paramGroups[1], eps: undefined }] }),
    }), /stateDict\.paramGroups\[1\] lacks eps/);
    // The good file loads.
    await loadOptimizerState(target.opt, file);
    expect(target.opt.state.size).toBe(3);
    await expect(saveOptimizerState({} as never, file)).rejects.toThrow(/^saveOptimizerState: optimizer must be an Adam or AdamW optimiser/);
  });
});

test('loadStateDict wants every group option: a partial state is refused, not filled in from the optimiser', () => {
  const p = randn([2]).requiresGrad_(true);
  const opt = new AdamW([p], { lr: 0.1 });
  const sd = opt.stateDict();
  const partial = { ...sd, paramGroups: [{ numParams: 1, lr: 0.2 }] } as unknown as AdamStateDict;
  expectThrows(() => opt.loadStateDict(partial), RangeError, /^AdamW\.loadStateDict: stateDict\.paramGroups\[0\] lacks betas, eps, weightDecay, amsgrad/);
  expect(opt.paramGroups[0].lr).toBe(0.1);
  const bad = { ...sd, paramGroups: [{ ...sd.paramGroups[0], lr: -1 }] };
  expectThrows(() => opt.loadStateDict(bad), RangeError, /paramGroups\[0\]\.lr must be a number >= 0/);
});
