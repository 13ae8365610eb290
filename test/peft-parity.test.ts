// Parity with PEFT beyond plain LoRA: checked against test/fixtures/peft-parity.json, written by
// test/fixtures/generate_peft.py (PEFT's formulas in plain torch).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Linear, LoRALinear, Module, Sequential, Tensor, cuda, getNbTrainableParameters, injectLora, loraLayers, manualSeed, mergeAndUnload,
  loadAdapter, mergeLora, noGrad, printTrainableParameters, randn, saveAdapter, saveMerged, tensor, unload, unmergeLora,
} from '../lib';
import { saveSafetensors } from '../lib/safetensors';

interface T { shape: number[]; data: number[] }
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const fx: any = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'peft-parity.json'), 'utf8'));
const f64 = (v: T) => tensor(v.data, { dtype: 'float64' }).reshape(...v.shape);

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-peft-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('printTrainableParameters and getNbTrainableParameters (PEFT format)', () => {
  test('counts and the line as PEFT prints them', () => {
    const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      const small = new Sequential(new Linear(16, 32), new Linear(32, 8));
      injectLora(small, { r: 4 });
      expect(getNbTrainableParameters(small)).toEqual([fx.trainable.small.trainable, fx.trainable.small.all]);
      expect(printTrainableParameters(small)).toBe(fx.trainable.small.line);
      expect(log).toHaveBeenLastCalledWith(fx.trainable.small.line);
      const big = new Sequential(new Linear(1000, 1200));
      injectLora(big, { r: 8 });
      expect(printTrainableParameters(big)).toBe(fx.trainable.big.line);
    } finally {
      log.mockRestore();
    }
  });

  test('a tied weight counts once, as torch named_parameters lists it once', () => {
    const a = new Linear(4, 4, { bias: false });
    const b = new Linear(4, 4, { bias: false });
    b.weight = a.weight;
    expect(getNbTrainableParameters(new Sequential(a, b))).toEqual([16, 16]);
    expect(() => printTrainableParameters(new Sequential())).toThrow(/^printTrainableParameters: the model has no parameters$/);
  });
});

describe('mergeAndUnload and unload', () => {
  function adapted(): { model: Sequential; x: Tensor } {
    manualSeed(11);
    const model = new Sequential(new Linear(6, 5), new Linear(5, 4));
    injectLora(model, { r: 2, alpha: 4 });
    noGrad(() => { for (const [, l] of loraLayers(model)) l.B!.copy_(randn([...l.B!.shape], { std: 0.3 })); });
    return { model, x: randn([3, 6]) };
  }

  test('mergeAndUnload gives the plain module tree computing what the adapted model did', () => {
    const { model, x } = adapted();
    const want = noGrad(() => model.forward(x) as Tensor).toArray();
    const layers = loraLayers(model).map(([, l]) => l);
    const out = mergeAndUnload(model);
    expect(out).toBe(model);
    expect(loraLayers(model)).toEqual([]);
    expect([...model.modules()].filter((m) => m instanceof Linear)).toHaveLength(2);
    expect([...model.namedParameters()].map(([n]) => n)).toEqual(['0.weight', '0.bias', '1.weight', '1.bias']);
    expect(maxAbsDiff(noGrad(() => model.forward(x) as Tensor).toArray(), want)).toBeLessThan(1e-5);
    // The adapters are freed.
    for (const l of layers) expect(l.A).toBeNull();
  });

  test('unload removes the adapters without merging; an adapter merged before stays in the weight, as PEFT', () => {
    const { model, x } = adapted();
    const base = new Sequential(...loraLayers(model).map(([, l]) => l.origLinear));
    const want = noGrad(() => base.forward(x) as Tensor).toArray();
    unload(model);
    expect(loraLayers(model)).toEqual([]);
    expect(maxAbsDiff(noGrad(() => model.forward(x) as Tensor).toArray(), want)).toBeLessThan(1e-6);

    const merged = adapted();
    const adaptedOut = noGrad(() => merged.model.forward(merged.x) as Tensor).toArray();
    mergeLora(merged.model);
    unload(merged.model);
    expect(loraLayers(merged.model)).toEqual([]);
    expect(maxAbsDiff(noGrad(() => merged.model.forward(merged.x) as Tensor).toArray(), adaptedOut)).toBeLessThan(1e-5);
  });

  test('a model that is itself a LoRALinear gives back its Linear', () => {
    const lin = new Linear(3, 2);
    const l = new LoRALinear(lin, { r: 1 });
    expect(mergeAndUnload(l)).toBe(lin);
    expect(unload(new LoRALinear(lin, { r: 1 }))).toBe(lin);
    expect(() => mergeAndUnload({} as Module)).toThrow(/^mergeAndUnload: model must be a Module/);
  });
});

describe('config defaults', () => {
  test('a config without r and lora_alpha means r = 8, lora_alpha = 8, as PEFT\'s LoraConfig', async () => {
    const dir = path.join(tmp, 'defaults');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', target_modules: ['0'] }));
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), {
      'base_model.model.0.lora_A.weight': randn([8, 6]), 'base_model.model.0.lora_B.weight': randn([5, 8]),
    });
    const model = new Sequential(new Linear(6, 5));
    expect(await loadAdapter(model, dir)).toEqual(['0']);
    const [[, l]] = loraLayers(model);
    expect([l.r, l.alpha, l.scale]).toEqual([8, 8, 1]);
  });
});

describe('target selection as PEFT\'s check_target_module_exists', () => {
  class Node extends Module {
    forward(): never {
      throw new Error('a container');
    }
  }
  /** A tree of Linear(2, 2) at the fixture's names, with containers between. */
  function tree(): Module {
    const root = new Node();
    for (const name of fx.targets.names as string[]) {
      let cur: Module = root;
      const parts = name.split('.');
      parts.forEach((p, i) => {
        const rec = cur as unknown as Record<string, Module>;
        if (!rec[p]) rec[p] = i === parts.length - 1 ? new Linear(2, 2) : new Node();
        cur = rec[p];
      });
    }
    return root;
  }
  type Cfg = Record<string, unknown>;
  const cases = (fx.targets.configs as { config: Cfg; selected: string[] }[]).map((c) => [JSON.stringify(c.config), c] as const);

  test.each(cases)('loadAdapter selects as PEFT: %s', async (_, { config, selected }) => {
    const dir = fs.mkdtempSync(path.join(tmp, 'targets-'));
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, lora_alpha: 1, ...config }));
    const weights: Record<string, Tensor> = {};
    for (const n of selected) {
      weights[`base_model.model.${n}.lora_A.weight`] = randn([1, 2]);
      weights[`base_model.model.${n}.lora_B.weight`] = randn([2, 1]);
    }
    for (const n of (config.modules_to_save ?? []) as string[]) {
      weights[`base_model.model.${n}.weight`] = randn([2, 2]);
      weights[`base_model.model.${n}.bias`] = randn([2]);
    }
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), weights);
    const model = tree();
    expect((await loadAdapter(model, dir)).sort()).toEqual([...selected].sort());
  });

  test.each(cases)('injectLora selects as PEFT: %s', (_, { config, selected }) => {
    const model = tree();
    const options = {
      r: 1, targetModules: config.target_modules as string[] | string, allowUnmatchedTargets: true,
      ...(config.layers_to_transform !== undefined ? { layersToTransform: config.layers_to_transform as number[] } : {}),
      ...(config.layers_pattern !== undefined ? { layersPattern: config.layers_pattern as string[] } : {}),
      ...(config.exclude_modules !== undefined ? { excludeModules: config.exclude_modules as string[] } : {}),
      ...(config.modules_to_save !== undefined ? { modulesToSave: config.modules_to_save as string[] } : {}),
    };
    if (typeof config.target_modules === 'string' && config.layers_to_transform !== undefined) {
      // PEFT ignores layers_to_transform beside a regex; a call that asks for both is refused.
      expect(() => injectLora(model, options)).toThrow(/^injectLora: options\.targetModules must be a list of names when options\.layersToTransform is given/);
      return;
    }
    expect(injectLora(model, options).sort()).toEqual([...selected].sort());
  });

  test('bad values of the fields are refused by name', async () => {
    expect(() => injectLora(tree(), { targetModules: ['q_proj'], layersToTransform: [-1] }))
      .toThrow(/^injectLora: options\.layersToTransform must be a layer index or a list of layer indices/);
    expect(() => injectLora(tree(), { targetModules: ['q_proj'], excludeModules: '(' }))
      .toThrow(/^injectLora: options\.excludeModules "\(" is not a valid regular expression/);
    expect(() => injectLora(tree(), { targetModules: ['q_proj'], excludeModules: ['q_proj'] }))
      .toThrow(/^injectLora: options\.targetModules \[q_proj\] selected no Linear layer/);
    const dir = fs.mkdtempSync(path.join(tmp, 'targets-bad-'));
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, target_modules: ['q_proj'], layers_to_transform: 'x' }));
    await expect(loadAdapter(tree(), dir)).rejects.toThrow(/^loadAdapter: adapter_config\.json: layers_to_transform must be a layer index or a list of layer indices/);
  });
});

describe('rank and alpha by layer from injectLora options (PEFT rank_pattern / alpha_pattern)', () => {
  test('a map (PEFT\'s pattern keys) or a function of the name; saved and loaded back per layer', async () => {
    const model = new Sequential(new Sequential(new Linear(6, 6), new Linear(6, 6)), new Sequential(new Linear(6, 6), new Linear(6, 6)));
    manualSeed(2);
    injectLora(model, {
      r: 2, alpha: 4, rankPattern: { '1\\.0': 3, '.\\.0': 5 }, alphaPattern: (n) => (n.endsWith('.1') ? 7 : undefined),
    });
    const got = Object.fromEntries(loraLayers(model).map(([n, l]) => [n, [l.r, l.alpha]]));
    // Both keys match '1.0': the first one wins, as in PEFT.
    expect(got).toEqual({ '0.0': [5, 4], '0.1': [2, 7], '1.0': [3, 4], '1.1': [2, 7] });
    noGrad(() => { for (const [, l] of loraLayers(model)) l.B!.copy_(randn([...l.B!.shape])); });
    const dir = path.join(tmp, 'patterns');
    await saveAdapter(model, dir);
    const again = new Sequential(new Sequential(new Linear(6, 6), new Linear(6, 6)), new Sequential(new Linear(6, 6), new Linear(6, 6)));
    await loadAdapter(again, dir);
    expect(Object.fromEntries(loraLayers(again).map(([n, l]) => [n, [l.r, l.alpha]]))).toEqual(got);
    expect(() => injectLora(new Sequential(new Linear(2, 2)), { rankPattern: { '0': 1.5 } }))
      .toThrow(/^injectLora: options\.rankPattern\["0"\] must be a non-negative integer, got 1\.5$/);
    expect(() => injectLora(new Sequential(new Linear(2, 2)), { alphaPattern: () => 'x' as never }))
      .toThrow(/^injectLora: options\.alphaPattern\('0'\) must be a finite number/);
  });
});

// --------------------------------------------------- lora_bias and DoRA on a Linear

interface LinearCase {
  r: number; alpha: number; W: T; b: T | null; A: T; B: T; lora_bias: T | null; magnitude: T | null; x: T; grad_out: T;
  y: T; dx: T; dA: T; dB: T; dlora_bias: T | null; dmagnitude: T | null; merged_W: T; merged_b?: T;
}

/** The fixture's layer: a float64 LoRALinear holding the case's tensors. */
function layerOf(c: LinearCase): LoRALinear {
  const [out, inF] = c.W.shape;
  const lin = new Linear(inF, out, { bias: c.b !== null, dtype: 'float64' });
  noGrad(() => {
    lin.weight.copy_(f64(c.W));
    if (c.b) lin.bias!.copy_(f64(c.b));
  });
  const l = new LoRALinear(lin, { r: c.r, alpha: c.alpha, loraBias: c.lora_bias !== null, useDora: c.magnitude !== null });
  noGrad(() => {
    l.A!.copy_(f64(c.A));
    l.B!.copy_(f64(c.B));
    if (c.lora_bias) l.loraBias!.copy_(f64(c.lora_bias));
    if (c.magnitude) l.magnitude!.copy_(f64(c.magnitude));
  });
  return l;
}

const close = (t: Tensor | null, want: T, tol = 1e-10) => {
  expect(t).not.toBeNull();
  expect(t!.shape).toEqual(want.shape);
  expect(maxAbsDiff(t!.toArray(), want.data)).toBeLessThan(tol);
};

describe.each(Object.keys(fx.linear))('Linear with %s: as PEFT computes it', (name) => {
  const c = fx.linear[name] as LinearCase;

  test('forward and the gradients of x, A, B, the lora_B bias and the magnitude', () => {
    const l = layerOf(c);
    const x = f64(c.x).requiresGrad_(true);
    const y = l.forward(x);
    close(y, c.y);
    y.backward(f64(c.grad_out));
    close(x.grad, c.dx);
    close(l.A!.grad, c.dA);
    close(l.B!.grad, c.dB);
    if (c.dlora_bias) close(l.loraBias!.grad, c.dlora_bias);
    if (c.dmagnitude) close(l.magnitude!.grad, c.dmagnitude);
    expect(l.origLinear.weight.grad).toBeNull();
  });

  test('merge gives PEFT\'s merged weight (and bias); unmerge restores the base', () => {
    const l = layerOf(c);
    const x = f64(c.x);
    if (c.lora_bias && !c.b) {
      expect(() => l.mergeToOrig()).toThrow(/^LoRALinear\.mergeToOrig: the layer has a LoRA bias \(loraBias\) but the wrapped Linear has no bias to merge it into$/);
      expect(maxAbsDiff(l.origLinear.weight.toArray(), c.W.data)).toBe(0);
      return;
    }
    l.mergeToOrig({ safe: true });
    close(l.origLinear.weight, c.merged_W);
    if (c.merged_b) close(l.origLinear.bias, c.merged_b);
    close(noGrad(() => l.forward(x)), c.y);
    l.unmergeFromOrig();
    close(l.origLinear.weight, c.W, 1e-12);
    if (c.b) close(l.origLinear.bias, c.b, 1e-12);
    close(noGrad(() => l.forward(x)), c.y);
  });

  test('saveMerged and a save / load round trip compute the same', async () => {
    const model = new Sequential(layerOf(c).origLinear);
    // Through injectLora and loadAdapter: the layer is rebuilt from the adapter files.
    injectLora(model, { r: c.r, alpha: c.alpha, loraBias: c.lora_bias !== null, useDora: c.magnitude !== null });
    const src = layerOf(c);
    const [[, l]] = loraLayers(model);
    noGrad(() => {
      l.A!.copy_(src.A!);
      l.B!.copy_(src.B!);
      if (src.loraBias) l.loraBias!.copy_(src.loraBias);
      if (src.magnitude) l.magnitude!.copy_(src.magnitude);
    });
    const dir = path.join(tmp, `linear-${name}`);
    await saveAdapter(model, dir);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect([cfg.use_dora, cfg.lora_bias]).toEqual([c.magnitude !== null, c.lora_bias !== null]);
    const keys = (await import('../lib/safetensors')).SafetensorsFile;
    const st = await keys.open(path.join(dir, 'adapter_model.safetensors'));
    expect([...st.keys()].sort()).toEqual([
      'base_model.model.0.lora_A.weight', 'base_model.model.0.lora_B.weight',
      ...(c.lora_bias ? ['base_model.model.0.lora_B.bias'] : []), ...(c.magnitude ? ['base_model.model.0.lora_magnitude_vector'] : []),
    ].sort());
    st.close();
    const again = new Sequential(layerOf(c).origLinear);
    await loadAdapter(again, dir);
    const x = f64(c.x);
    close(noGrad(() => again.forward(x) as Tensor), c.y);
    if (c.lora_bias && !c.b) {
      await expect(saveMerged(again, path.join(tmp, `merged-${name}`))).rejects.toThrow(/has no bias to merge it into/);
      return;
    }
    await saveMerged(again, path.join(tmp, `merged-${name}`));
    const merged = await (await import('../lib/safetensors')).loadSafetensors(path.join(tmp, `merged-${name}`, 'model.safetensors'));
    const plain = new Sequential(new Linear(c.W.shape[1], c.W.shape[0], { bias: c.b !== null, dtype: 'float64' }));
    plain.loadStateDict(merged);
    close(noGrad(() => plain.forward(x) as Tensor), c.y, 1e-6);
    // mergeLora / unmergeLora on the model, as on the layer.
    mergeLora(again, { safe: true });
    close(noGrad(() => again.forward(x) as Tensor), c.y);
    unmergeLora(again);
    close(loraLayers(again)[0][1].origLinear.weight, c.W, 1e-12);
  });
});

describe('lora_bias and DoRA: small print', () => {
  test('a fresh layer computes what the wrapped Linear does (B, the lora_B bias at zero; magnitude = row norms of W)', () => {
    manualSeed(4);
    const lin = new Linear(5, 3);
    const x = randn([2, 5]);
    const want = noGrad(() => lin.forward(x)).toArray();
    for (const o of [{ loraBias: true }, { useDora: true }]) {
      const l = new LoRALinear(lin, { r: 2, ...o });
      expect(maxAbsDiff(noGrad(() => l.forward(x)).toArray(), want)).toBeLessThan(1e-6);
    }
    const norms = Array.from({ length: 3 }, (_, i) => Math.hypot(...Array.from(lin.weight.toArray()).slice(i * 5, i * 5 + 5)));
    expect(maxAbsDiff(new LoRALinear(lin, { r: 2, useDora: true }).magnitude!.toArray(), norms)).toBeLessThan(1e-6);
    expect(() => new LoRALinear(lin, { r: 2, useDora: true, loraBias: true })).toThrow(/^LoRALinear: options\.loraBias is not supported with options\.useDora \(as in PEFT\)$/);
  });

  test('DoRA with dropout in training: the base output of the dropped-out input is rescaled, as PEFT does', () => {
    // With all of x dropped but one column kept, PEFT's formula can be checked by hand: the result is
    // x Wᵀ + b + (ratio − 1) xd Wᵀ + ratio scale xd Aᵀ Bᵀ, with xd the dropped-out input.
    manualSeed(9);
    const lin = new Linear(6, 4, { dtype: 'float64' });
    const l = new LoRALinear(lin, { r: 2, alpha: 2, dropout: 0.5, useDora: true });
    noGrad(() => {
      l.B!.copy_(randn([4, 2], { dtype: 'float64' }));
      l.magnitude!.copy_(l.magnitude!.mul(1.3));
    });
    l.train();
    const x = randn([3, 6], { dtype: 'float64' }).requiresGrad_(true);
    // The same draw again gives the same mask: xd comes back through a plain LoRA layer with an identity adapter.
    const probe = new LoRALinear(new Linear(6, 6, { bias: false, dtype: 'float64' }), { r: 6, alpha: 6, dropout: 0.5 });
    noGrad(() => {
      probe.origLinear.weight.zero_();
      const eye = Array.from({ length: 36 }, (_, i) => (i % 7 === 0 ? 1 : 0));
      probe.A!.copy_(tensor(eye, { dtype: 'float64' }).reshape(6, 6));
      probe.B!.copy_(tensor(eye, { dtype: 'float64' }).reshape(6, 6));
    });
    probe.train();
    manualSeed(21);
    const y = l.forward(x);
    manualSeed(21);
    const xd = noGrad(() => probe.forward(x));
    const W = lin.weight;
    const ratio = noGrad(() => {
      const V = W.add(l.B!.matmul(l.A!));
      return l.magnitude!.div(V.mul(V).sum(1).sqrt());
    });
    const want = noGrad(() => x.matmul(W.t()).add(lin.bias!)
      .add(xd.matmul(W.t()).mul(ratio.sub(1)))
      .add(xd.matmul(l.A!.t()).matmul(l.B!.t()).mul(ratio)));
    expect(maxAbsDiff(y.toArray(), want.toArray())).toBeLessThan(1e-10);
    // Some inputs were dropped and some kept (the check above is not vacuous).
    const kept = Array.from(xd.toArray()).filter((v) => v !== 0).length;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(18);
    y.sum().backward();
    expect(l.magnitude!.grad).not.toBeNull();
  });

  test('adapter configs: use_dora with lora_bias, or tensors the config does not announce, are refused', async () => {
    const write = async (dir: string, config: Record<string, unknown>, tensors: Record<string, Tensor>) => {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, target_modules: ['0'], ...config }));
      await (await import('../lib/safetensors')).saveSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    };
    const ab = { 'base_model.model.0.lora_A.weight': randn([1, 3]), 'base_model.model.0.lora_B.weight': randn([2, 1]) };
    const m = () => new Sequential(new Linear(3, 2));
    await write(path.join(tmp, 'both'), { use_dora: true, lora_bias: true }, ab);
    await expect(loadAdapter(m(), path.join(tmp, 'both'))).rejects.toThrow(/^loadAdapter: adapter_config\.json: lora_bias is not supported with use_dora/);
    await write(path.join(tmp, 'mag'), {}, { ...ab, 'base_model.model.0.lora_magnitude_vector': randn([2]) });
    await expect(loadAdapter(m(), path.join(tmp, 'mag'))).rejects.toThrow(/has DoRA magnitudes .* but adapter_config\.json does not set use_dora/);
    await write(path.join(tmp, 'nomag'), { use_dora: true }, ab);
    await expect(loadAdapter(m(), path.join(tmp, 'nomag'))).rejects.toThrow(/lacks the DoRA magnitude \(lora_magnitude_vector\) for: 0$/);
    await write(path.join(tmp, 'badbias'), { lora_bias: true }, { ...ab, 'base_model.model.0.lora_B.bias': randn([3]) });
    await expect(loadAdapter(m(), path.join(tmp, 'badbias'))).rejects.toThrow(/'base_model\.model\.0\.lora_B\.bias' has shape \[3\], expected \[2\]/);
    const model = m();
    await expect(loadAdapter(model, path.join(tmp, 'badbias'))).rejects.toThrow();
    expect(loraLayers(model)).toEqual([]);
  });
});

(cuda.isAvailable() ? describe : describe.skip)('CUDA: lora_bias and DoRA as on the CPU', () => {
  test.each(Object.keys(fx.linear))('%s: forward, gradients, merge', (name) => {
    const c = fx.linear[name] as LinearCase;
    const run = (device: 'cpu' | 'cuda') => {
      const l = layerOf(c);
      new Sequential(l).to(device);
      const x = f64(c.x).to(device).requiresGrad_(true);
      const y = l.forward(x);
      y.backward(f64(c.grad_out).to(device));
      const out = [y, x.grad!, l.A!.grad!, l.B!.grad!, ...(l.loraBias ? [l.loraBias.grad!] : []), ...(l.magnitude ? [l.magnitude.grad!] : [])]
        .map((t) => Array.from(t.toArray()));
      if (!(c.lora_bias && !c.b)) {
        l.mergeToOrig({ safe: true });
        out.push(Array.from(l.origLinear.weight.toArray()));
        l.unmergeFromOrig();
        out.push(Array.from(l.origLinear.weight.toArray()));
      }
      return out;
    };
    const cpu = run('cpu');
    const gpu = run('cuda');
    expect(gpu.length).toBe(cpu.length);
    cpu.forEach((a, i) => expect(maxAbsDiff(gpu[i], a)).toBeLessThan(1e-9));
  });

  test('DoRA with dropout in training: the same draws, output and gradients as on the CPU', () => {
    const c = fx.linear.dora_bias as LinearCase;
    const run = (device: 'cpu' | 'cuda') => {
      const [out, inF] = c.W.shape;
      const lin = new Linear(inF, out, { dtype: 'float64' });
      noGrad(() => {
        lin.weight.copy_(f64(c.W));
        lin.bias!.copy_(f64(c.b!));
      });
      const l = new LoRALinear(lin, { r: c.r, alpha: c.alpha, dropout: 0.4, useDora: true });
      noGrad(() => {
        l.A!.copy_(f64(c.A));
        l.B!.copy_(f64(c.B));
        l.magnitude!.copy_(f64(c.magnitude!));
      });
      new Sequential(l).to(device).train();
      const x = f64(c.x).to(device).requiresGrad_(true);
      manualSeed(77);
      const y = l.forward(x);
      y.backward(f64(c.grad_out).to(device));
      return [y, x.grad!, l.A!.grad!, l.B!.grad!, l.magnitude!.grad!].map((t) => Array.from(t.toArray()));
    };
    const cpu = run('cpu');
    const gpu = run('cuda');
    cpu.forEach((a, i) => expect(maxAbsDiff(gpu[i], a)).toBeLessThan(1e-9));
    // Dropout did act: the output is not the eval-mode one.
    expect(maxAbsDiff(cpu[0], c.y.data)).toBeGreaterThan(1e-3);
  });
});

// ------------------------------------------------------------ modules_to_save

describe('modules_to_save: trainable copies saved under the modules\' own keys', () => {
  test('Llama with embed_tokens and lm_head to save: train, save, load, disable, merge', async () => {
    const { loadCases, writeCheckpoint } = await import('./helpers/llama-weights');
    const { LlamaForCausalLM, withAdaptersDisabled, getLoraAB, ModulesToSaveWrapper, Adam } = await import('../lib');
    const cases = loadCases();
    const base = path.join(tmp, 'mts-base');
    await writeCheckpoint(base, cases.cases.qwen2_bias_tied_mqa);
    const ids = [[1, 5, 9, 2, 6, 5, 3]];
    const logits = (m: InstanceType<typeof LlamaForCausalLM>) => noGrad(() => m.forward(ids)).toArray();
    const model = await LlamaForCausalLM.fromPretrained(base);
    const plain = logits(model);
    manualSeed(3);
    // lm_head is in both lists: as in PEFT, a module to save gets no LoRA layer.
    injectLora(model, { r: 2, alpha: 4, targetModules: ['q_proj', 'lm_head'], modulesToSave: ['embed_tokens', 'lm_head'] });
    expect(model.lm_head).toBeInstanceOf(ModulesToSaveWrapper);
    expect(model.model.embed_tokens).toBeInstanceOf(ModulesToSaveWrapper);
    expect(loraLayers(model).map(([n]) => n).every((n) => n.endsWith('q_proj'))).toBe(true);
    // A training step changes the copies only; the originals are kept.
    model.train();
    const params = getLoraAB(model);
    const embedCopy = (model.model.embed_tokens as unknown as InstanceType<typeof ModulesToSaveWrapper>).modulesToSave as unknown as { weight: Tensor };
    expect(params).toContain(embedCopy.weight);
    const orig = Array.from((model.model.embed_tokens as unknown as InstanceType<typeof ModulesToSaveWrapper>).originalModule.parameters())[0];
    const before = Array.from(orig.toArray());
    const opt = new Adam(params, { lr: 1e-2 });
    model.loss(ids).backward();
    opt.step();
    model.eval();
    expect(Array.from(orig.toArray())).toEqual(before);
    const trained = logits(model);
    expect(maxAbsDiff(trained, plain)).toBeGreaterThan(1e-4);
    expect(maxAbsDiff(withAdaptersDisabled(model, () => logits(model)), plain)).toBeLessThan(1e-5);

    const dir = path.join(tmp, 'mts-adapter');
    await saveAdapter(model, dir);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg.modules_to_save).toEqual(['model.embed_tokens', 'lm_head']);
    const { SafetensorsFile } = await import('../lib/safetensors');
    const st = await SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors'));
    const keys = [...st.keys()];
    st.close();
    expect(keys).toContain('base_model.model.lm_head.weight');
    expect(keys).toContain('base_model.model.model.embed_tokens.weight');
    expect(keys.filter((k) => /original|modulesToSave|modules_to_save/.test(k))).toEqual([]);

    const again = await LlamaForCausalLM.fromPretrained(base);
    await loadAdapter(again, dir);
    expect(maxAbsDiff(logits(again), trained)).toBe(0);
    const merged = path.join(tmp, 'mts-merged');
    await saveMerged(again, merged);
    expect(maxAbsDiff(logits(await LlamaForCausalLM.fromPretrained(merged)), trained)).toBeLessThan(1e-4);
    mergeAndUnload(again);
    expect(again.lm_head).toBeInstanceOf(Linear);
    expect(modulesOf(again).some((m) => m instanceof ModulesToSaveWrapper || m instanceof LoRALinear)).toBe(false);
    expect(maxAbsDiff(logits(again), trained)).toBeLessThan(1e-4);
  });

  test('a modules_to_save that names nothing, or tensors that are missing, are refused', async () => {
    expect(() => injectLora(new Sequential(new Linear(2, 2), new Linear(2, 2)), { targetModules: ['0'], modulesToSave: ['head'] }))
      .toThrow(/^injectLora: options\.modulesToSave \[head\] names no module of the model$/);
    const dir = path.join(tmp, 'mts-missing');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, target_modules: ['0'], modules_to_save: ['1'] }));
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), {
      'base_model.model.0.lora_A.weight': randn([1, 2]), 'base_model.model.0.lora_B.weight': randn([2, 1]), 'base_model.model.1.weight': randn([2, 2]),
    });
    const model = new Sequential(new Linear(2, 2), new Linear(2, 2));
    await expect(loadAdapter(model, dir)).rejects.toThrow(/^loadAdapter: adapter_model\.safetensors lacks tensors of the modules to save: base_model\.model\.1\.bias$/);
    expect(loraLayers(model)).toEqual([]);
  });
});

function modulesOf(m: Module): Module[] {
  return [...m.modules()];
}

// ------------------------------------------------------------ LoRA on Embedding

describe('LoRA on an Embedding (lora_embedding_A [r, vocab], lora_embedding_B [dim, r])', () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const c = fx.embedding as any;
  class Embedder extends Module {
    embed_tokens: InstanceType<typeof import('../lib').Embedding>;
    constructor(E: typeof import('../lib').Embedding) {
      super();
      this.embed_tokens = new E(c.weight.shape[0], c.weight.shape[1], { dtype: 'float64' });
      noGrad(() => this.embed_tokens.weight.copy_(f64(c.weight)));
    }
    forward(ids: Tensor): Tensor {
      return (this.embed_tokens as unknown as { forward(i: Tensor): Tensor }).forward(ids);
    }
  }
  const idsOf = () => tensor(c.ids, { dtype: 'int32' });

  test('forward, gradients, merge and unmerge as PEFT\'s lora.Embedding; save, load, saveMerged', async () => {
    const { Embedding, LoRAEmbedding, loraEmbeddingLayers, SafetensorsFile, loadSafetensors } = await import('../lib');
    const model = new Embedder(Embedding);
    // Not adapted unless named: injectLora without targets adapts Linear layers only.
    expect(injectLora(model)).toEqual([]);
    expect(injectLora(model, { r: c.r, alpha: c.alpha, targetModules: ['embed_tokens'] })).toEqual(['embed_tokens']);
    const l = model.embed_tokens as unknown as InstanceType<typeof LoRAEmbedding>;
    expect(l).toBeInstanceOf(LoRAEmbedding);
    // PEFT's start: A zero, so the layer computes what the embedding did.
    expect(Array.from(l.A!.toArray()).every((v) => v === 0)).toBe(true);
    noGrad(() => {
      l.A!.copy_(f64(c.A));
      l.B!.copy_(f64(c.B));
    });
    const y = model.forward(idsOf());
    close(y, c.y);
    y.backward(f64(c.grad_out));
    close(l.A!.grad, c.dA);
    close(l.B!.grad, c.dB);
    expect(l.origEmbedding.weight.grad).toBeNull();
    mergeLora(model, { safe: true });
    close(l.origEmbedding.weight, c.merged_weight);
    close(noGrad(() => model.forward(idsOf())), c.y);
    unmergeLora(model);
    close(l.origEmbedding.weight, c.weight, 1e-12);

    const dir = path.join(tmp, 'emb-adapter');
    await saveAdapter(model, dir);
    const st = await SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors'));
    expect([...st.keys()].sort()).toEqual(['base_model.model.embed_tokens.base_layer.weight',
      'base_model.model.embed_tokens.lora_embedding_A', 'base_model.model.embed_tokens.lora_embedding_B']);
    expect(st.entry('base_model.model.embed_tokens.lora_embedding_A').shape).toEqual([c.r, c.weight.shape[0]]);
    expect(st.entry('base_model.model.embed_tokens.lora_embedding_B').shape).toEqual([c.weight.shape[1], c.r]);
    st.close();
    const again = new Embedder(Embedding);
    expect(await loadAdapter(again, dir)).toEqual(['embed_tokens']);
    close(noGrad(() => again.forward(idsOf())), c.y);
    expect(loraEmbeddingLayers(again)).toHaveLength(1);
    await saveMerged(again, path.join(tmp, 'emb-merged'));
    const merged = await loadSafetensors(path.join(tmp, 'emb-merged', 'model.safetensors'));
    close(merged['embed_tokens.weight'], c.merged_weight, 1e-6); // written as float32
    mergeAndUnload(again);
    expect(again.embed_tokens).toBeInstanceOf(Embedding);
    close(noGrad(() => again.forward(idsOf())), c.y);
  });

  test('a Llama with tied embeddings and LoRA on embed_tokens: save, load, merged checkpoint; mergeLora refuses the tied weight', async () => {
    const { loadCases, writeCheckpoint } = await import('./helpers/llama-weights');
    const { LlamaForCausalLM, loraEmbeddingLayers } = await import('../lib');
    const base = path.join(tmp, 'emb-llama');
    await writeCheckpoint(base, loadCases().cases.qwen2_bias_tied_mqa);
    const ids = [[1, 5, 9, 2, 6, 5, 3]];
    const logits = (m: InstanceType<typeof LlamaForCausalLM>) => noGrad(() => m.forward(ids)).toArray();
    const model = await LlamaForCausalLM.fromPretrained(base);
    const plain = logits(model);
    manualSeed(8);
    injectLora(model, { r: 2, alpha: 4, targetModules: ['q_proj', 'embed_tokens'] });
    noGrad(() => { for (const [, l] of loraEmbeddingLayers(model)) l.A!.copy_(randn([...l.A!.shape], { std: 0.5 })); });
    const want = logits(model);
    expect(maxAbsDiff(want, plain)).toBeGreaterThan(1e-4);
    expect(() => mergeLora(model)).toThrow(/^mergeLora: layer 'model\.embed_tokens': its weight is tied to another module/);
    const dir = path.join(tmp, 'emb-llama-adapter');
    await saveAdapter(model, dir);
    const again = await LlamaForCausalLM.fromPretrained(base);
    await loadAdapter(again, dir);
    expect(maxAbsDiff(logits(again), want)).toBe(0);
    const out = path.join(tmp, 'emb-llama-merged');
    await saveMerged(again, out);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).tie_word_embeddings).toBe(false);
    expect(maxAbsDiff(logits(await LlamaForCausalLM.fromPretrained(out)), want)).toBeLessThan(1e-4);
  });

  test('DoRA and lora_bias on embeddings are refused (PEFT has no lora_bias there)', async () => {
    const { Embedding } = await import('../lib');
    expect(() => injectLora(new Embedder(Embedding), { targetModules: ['embed_tokens'], useDora: true }))
      .toThrow(/^injectLora: options\.useDora is not supported on an Embedding \('embed_tokens'\)$/);
  });
});

describe('every field of PEFT\'s LoraConfig is honoured, ignored as harmless, or refused by name', () => {
  test('each field has a handling', async () => {
    const { PEFT_FIELD_HANDLING } = await import('../lib');
    const missing = (fx.config_fields as string[]).filter((f) => !(f in PEFT_FIELD_HANDLING));
    expect(missing).toEqual([]);
  });

  test.each((fx.config_fields as string[]).map((f) => [f]))('%s', async (field) => {
    const { PEFT_FIELD_HANDLING } = await import('../lib');
    if (PEFT_FIELD_HANDLING[field] !== 'refused') return; // the applied ones have tests of their own above
    const dir = fs.mkdtempSync(path.join(tmp, `field-${field}-`));
    const value = /^(use_|fan_in)/.test(field) ? true : [1];
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, target_modules: ['0'], [field]: value }));
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), { 'base_model.model.0.lora_A.weight': randn([1, 2]), 'base_model.model.0.lora_B.weight': randn([2, 1]) });
    const model = new Sequential(new Linear(2, 2));
    await expect(loadAdapter(model, dir)).rejects.toThrow(new RegExp(`^loadAdapter: adapter_config\\.json: ${field} is .* is not supported$`));
    expect(loraLayers(model)).toEqual([]);
  });
});

// ------------------------------------------------------------ named adapters

describe('named adapters (PEFT\'s adapter_name)', () => {
  class QV extends Module {
    q: Linear;
    v: Linear;
    constructor() {
      super();
      manualSeed(31);
      this.q = new Linear(4, 4);
      this.v = new Linear(4, 4);
    }
    forward(x: Tensor): Tensor {
      return (this.v.forward(this.q.forward(x) as Tensor) as Tensor);
    }
  }
  const randomB = (m: Module) => noGrad(() => {
    for (const [, l] of loraLayers(m)) l.B!.copy_(randn([...l.B!.shape], { std: 0.5 }));
  });

  test('add, switch, train only the active one, disable, save all / one, load by name, delete', async () => {
    const { activeAdapter, listAdapters, setAdapter, deleteAdapter, getLoraAB, withAdaptersDisabled, Adam } = await import('../lib');
    const model = new QV();
    const x = randn([3, 4]);
    const out = () => Array.from(noGrad(() => model.forward(x)).toArray());
    const base = out();
    injectLora(model, { r: 2, alpha: 2, targetModules: ['q'] });
    randomB(model);
    const withDefault = out();
    // A second adapter with another rank and other targets is added, not activated (as PEFT's add_adapter).
    expect(injectLora(model, { r: 3, alpha: 6, targetModules: ['v'], adapterName: 'other' })).toEqual(['v']);
    expect(activeAdapter(model)).toBe('default');
    expect(listAdapters(model)).toEqual(['default', 'other']);
    expect(loraLayers(model).map(([n]) => n)).toEqual(['q']);
    expect(maxAbsDiff(out(), withDefault)).toBe(0);

    setAdapter(model, 'other');
    expect(activeAdapter(model)).toBe('other');
    expect(loraLayers(model).map(([n, l]) => [n, l.r])).toEqual([['v', 3]]);
    randomB(model);
    const withOther = out();
    expect(maxAbsDiff(withOther, withDefault)).toBeGreaterThan(1e-4);
    expect(maxAbsDiff(withAdaptersDisabled(model, out), base)).toBeLessThan(1e-6);

    // Training touches the active adapter's tensors only.
    setAdapter(model, 'default');
    const defaultTensors = getLoraAB(model).map((t) => Array.from(t.toArray()));
    setAdapter(model, 'other');
    const opt = new Adam(getLoraAB(model), { lr: 0.1 });
    model.forward(x).sum().backward();
    opt.step();
    const trainedOther = out();
    expect(maxAbsDiff(trainedOther, withOther)).toBeGreaterThan(1e-4);
    setAdapter(model, 'default');
    expect(getLoraAB(model).map((t) => Array.from(t.toArray()))).toEqual(defaultTensors);
    expect(maxAbsDiff(out(), withDefault)).toBe(0);

    // Saved as PEFT saves them: 'default' in the directory, the others in subfolders.
    const dir = path.join(tmp, 'named');
    await saveAdapter(model, dir);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).r).toBe(2);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'other', 'adapter_config.json'), 'utf8')).r).toBe(3);
    expect(activeAdapter(model)).toBe('default');
    const one = path.join(tmp, 'named-one');
    await saveAdapter(model, one, { adapterName: 'other' });
    expect(fs.readdirSync(one)).toEqual(['other']);

    const again = new QV();
    await loadAdapter(again, dir);
    await loadAdapter(again, path.join(dir, 'other'), { adapterName: 'other' });
    expect(listAdapters(again)).toEqual(['default', 'other']);
    const outAgain = () => Array.from(noGrad(() => again.forward(x)).toArray());
    expect(maxAbsDiff(outAgain(), withDefault)).toBe(0);
    setAdapter(again, 'other');
    expect(maxAbsDiff(outAgain(), trainedOther)).toBe(0);

    expect(() => setAdapter(model, 'nope')).toThrow(/^setAdapter: the model has no adapter 'nope' \(it has: 'default', 'other'\)$/);
    mergeLora(model);
    expect(() => setAdapter(model, 'other')).toThrow(/^setAdapter: adapters of q are merged into their weights; call unmergeLora\(model\) first$/);
    unmergeLora(model);
    const otherLayer = (() => { setAdapter(model, 'other'); const l = loraLayers(model)[0][1]; setAdapter(model, 'default'); return l; })();
    deleteAdapter(model, 'other');
    expect(listAdapters(model)).toEqual(['default']);
    expect(otherLayer.A).not.toBeNull();
    expect(otherLayer.A!.isDisposed).toBe(true);
    deleteAdapter(model, 'default');
    expect(listAdapters(model)).toEqual([]);
    expect(maxAbsDiff(out(), base)).toBe(0);
  });
});
