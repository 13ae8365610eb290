// Parity with PEFT beyond plain LoRA: checked against test/fixtures/peft-parity.json, written by
// test/fixtures/generate_peft.py (PEFT's formulas in plain torch).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Linear, LoRALinear, Module, Sequential, Tensor, getNbTrainableParameters, injectLora, loraLayers, manualSeed, mergeAndUnload,
  loadAdapter, mergeLora, noGrad, printTrainableParameters, randn, tensor, unload,
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

  test('unload gives the base model back, unmerging a merged adapter first', () => {
    const { model, x } = adapted();
    const base = new Sequential(...loraLayers(model).map(([, l]) => l.origLinear));
    const want = noGrad(() => base.forward(x) as Tensor).toArray();
    mergeLora(model);
    unload(model);
    expect(loraLayers(model)).toEqual([]);
    expect(maxAbsDiff(noGrad(() => model.forward(x) as Tensor).toArray(), want)).toBeLessThan(1e-6);
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
    if (config.modules_to_save) return; // checked with modules_to_save below
    const dir = fs.mkdtempSync(path.join(tmp, 'targets-'));
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 1, lora_alpha: 1, ...config }));
    const weights: Record<string, Tensor> = {};
    for (const n of selected) {
      weights[`base_model.model.${n}.lora_A.weight`] = randn([1, 2]);
      weights[`base_model.model.${n}.lora_B.weight`] = randn([2, 1]);
    }
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), weights);
    const model = tree();
    expect((await loadAdapter(model, dir)).sort()).toEqual([...selected].sort());
  });

  test.each(cases)('injectLora selects as PEFT: %s', (_, { config, selected }) => {
    if (config.modules_to_save) return;
    const model = tree();
    const options = {
      r: 1, targetModules: config.target_modules as string[] | string, allowUnmatchedTargets: true,
      ...(config.layers_to_transform !== undefined ? { layersToTransform: config.layers_to_transform as number[] } : {}),
      ...(config.layers_pattern !== undefined ? { layersPattern: config.layers_pattern as string[] } : {}),
      ...(config.exclude_modules !== undefined ? { excludeModules: config.exclude_modules as string[] } : {}),
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
    const { saveAdapter } = await import('../lib');
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
