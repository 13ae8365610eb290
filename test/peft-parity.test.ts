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
