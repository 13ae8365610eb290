// Argument validation: every public entry checks its arguments in TypeScript and
// throws a TypeError or RangeError whose message reads
//   "<where>: <what> must be <expected>, got <received>"
// (or names the offending argument and values just as plainly). Native failures
// come back as JS Errors with a code; nothing here may abort the process.
import { spawnSync } from 'child_process';
import * as path from 'path';
import {
  Tensor, tensor, zeros, ones, full, randn, rand, Linear, ReLU, GELU, SiLU, Module, Sequential, LoRALinear, injectLora,
  Adam, AdamW, backendInfo,
} from '../lib';
import { expectThrows } from './helpers/expect-throws';


/** The standard message format, anchored. */
const FORMAT = /^[A-Za-z_.]+(?:\.[A-Za-z_]+)*: .+ must be .+, got .+$/s;

class TwoLayer extends Module {
  q_proj = new Linear(4, 4);
  out = new Linear(4, 2);
  act = new ReLU();
  forward(x: Tensor): Tensor {
    return this.out.forward(this.act.forward(this.q_proj.forward(x)));
  }
}

const cudaAvailable = backendInfo().cuda.available;

// ================================================================= creation

describe('tensor creation', () => {
  test('data length not matching shape', () => {
    const e = expectThrows(() => tensor([1, 2, 3], { shape: [2, 2] }), RangeError,
      /^tensor: data length must be 4 to match shape \[2, 2\], got 3$/);
    expect(e.message).toMatch(FORMAT);
    expectThrows(() => tensor(new Float32Array(5), { shape: [2, 3] }), RangeError, /data length must be 6.*got 5/);
  });

  test('negative or fractional dims', () => {
    expectThrows(() => zeros([2, -1]), RangeError, /shape\[1\] must be a non-negative integer, got -1$/);
    expectThrows(() => zeros([1.5]), RangeError, /shape\[0\] must be a non-negative integer, got 1\.5$/);
    expectThrows(() => ones([3, 2.5]), RangeError, /shape\[1\] must be a non-negative integer, got 2\.5$/);
    expectThrows(() => randn([-2]), RangeError, /^randn: shape\[0\] must be a non-negative integer, got -2$/);
    expectThrows(() => rand([2, NaN]), RangeError, /^rand: shape\[1\] must be a non-negative integer, got NaN$/);
    expectThrows(() => full([Infinity], 1), RangeError, /^full: shape\[0\] must be a non-negative integer, got Infinity$/);
    expectThrows(() => tensor([1, 2], { shape: [-1, -2] }), RangeError,
      /^tensor: options.shape\[0\] must be a non-negative integer, got -1$/);
    expectThrows(() => zeros(['2'] as unknown as number[]), TypeError, /shape\[0\] must be an integer, got "2"$/);
    expectThrows(() => zeros(3 as unknown as number[]), TypeError, /shape must be an array of non-negative integers, got 3$/);
  });

  test('nested arrays not rectangular', () => {
    expectThrows(() => tensor([[1, 2], [3]]), RangeError,
      /^tensor: data\[1\] must be an array of length 2 \(nested arrays must be rectangular\), got \[3\]$/);
    expectThrows(() => tensor([[[1], [2]], [[3], [4, 5]]]), RangeError, /data\[1\]\[1\] must be an array of length 1/);
    expectThrows(() => tensor([[1, 2], 3] as unknown as number[][]), RangeError, /data\[1\] must be an array of length 2.*got 3$/);
    expectThrows(() => tensor([1, [2]] as unknown as number[]), TypeError, /data\[1\] must be a number, got \[2\]$/);
  });

  test('non-number data', () => {
    expectThrows(() => tensor(['a'] as unknown as number[]), TypeError, /^tensor: data\[0\] must be a number, got "a"$/);
    expectThrows(() => tensor([[1, null]] as unknown as number[][]), TypeError, /data\[0\]\[1\] must be a number, got null$/);
    expectThrows(() => tensor('abc' as unknown as number[]), TypeError, /^tensor: data must be .*, got "abc"$/);
    expectThrows(() => tensor(undefined as unknown as number[]), TypeError, /^tensor: data must be .*, got undefined$/);
    expectThrows(() => tensor([1, 'x'] as unknown as number[], { shape: [2] }), TypeError, /data\[1\] must be a number, got "x"/);
    expectThrows(() => tensor([1.5], { dtype: 'int32' }), RangeError, /data\[0\] must be an integer in \[-2147483648, 2147483647\] \(int32 tensor\), got 1\.5/);
    expectThrows(() => full([2], 'a' as unknown as number), TypeError, /^full: value must be a number, got "a"$/);
  });

  test('unknown dtype', () => {
    expectThrows(() => tensor([1], { dtype: 'int8' as 'float32' }), RangeError,
      /^tensor: options\.dtype must be one of "float32", "float64", "int32", "bfloat16", "float16", got "int8"$/);
    expectThrows(() => zeros([1], { dtype: 3 as unknown as 'float32' }), TypeError, /options\.dtype must be one of .*, got 3$/);
    expectThrows(() => new Linear(2, 2, { dtype: 'int32' as 'float32' }), RangeError,
      /^Linear: options\.dtype must be one of "float32", "float64", "bfloat16", "float16", got "int32"$/);
    expectThrows(() => randn([2], { dtype: 'int32' }), RangeError, /^randn: options\.dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
  });

  test('unknown option key', () => {
    expectThrows(() => tensor([1], { dtyp: 'float32' } as never), TypeError, /^tensor: unknown option "dtyp" \(known: .*dtype.*\)$/);
    expectThrows(() => zeros([1], { shape: [1] } as never), TypeError, /unknown option "shape"/);
    expectThrows(() => new Linear(2, 2, { biases: false } as never), TypeError, /^Linear: unknown option "biases"/);
    expectThrows(() => new LoRALinear(new Linear(2, 2), { rank: 4 } as never), TypeError, /^LoRALinear: unknown option "rank"/);
    expectThrows(() => new Adam([zeros([1], { requiresGrad: true })], { learningRate: 1 } as never), TypeError,
      /^Adam: unknown option "learningRate"/);
    expectThrows(() => tensor([1], 'float64' as never), TypeError, /^tensor: options must be an object, got "float64"$/);
  });

  test('bad requiresGrad', () => {
    expectThrows(() => tensor([1], { requiresGrad: 1 as unknown as boolean }), TypeError,
      /^tensor: options\.requiresGrad must be a boolean, got 1$/);
    expectThrows(() => tensor([1], { dtype: 'int32', requiresGrad: true }), RangeError, /options\.dtype must be a float dtype/);
  });
});

// =================================================================== dispose

describe('use after dispose', () => {
  const disposedError = (fn: () => unknown): void => {
    let caught: unknown;
    try {
      fn();
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(Error);
    expect((caught as NodeJS.ErrnoException).code).toBe('ERR_TENSOR_DISPOSED');
    expect((caught as Error).message).toMatch(/has been disposed/);
  };

  const dead = (): Tensor => {
    const t = tensor([[1, 2], [3, 4]]);
    t.dispose();
    return t;
  };
  const live = () => tensor([[1, 2], [3, 4]]);

  test.each<[string, (t: Tensor) => unknown, string]>([
    ['toArray', (t) => t.toArray(), 'Tensor.toArray'],
    ['tolist', (t) => t.tolist(), 'Tensor.tolist'],
    ['item', (t) => t.item(), 'Tensor.item'],
    ['detach', (t) => t.detach(), 'Tensor.detach'],
    ['copy_', (t) => t.copy_([1, 2, 3, 4]), 'Tensor.copy_'],
    ['fill_', (t) => t.fill_(0), 'Tensor.fill_'],
    ['zero_', (t) => t.zero_(), 'Tensor.zero_'],
    ['backward', (t) => t.backward(), 'Tensor.backward'],
    ['copy_ source', (t) => live().copy_(t), 'Tensor.copy_'],
  ])('%s on a disposed tensor throws ERR_TENSOR_DISPOSED naming the method (every op: the op registry, in bad-input.test.ts)', (_name, op, where) => {
    disposedError(() => op(dead()));
    expect(() => op(dead())).toThrow(`${where}: tensor has been disposed`);
  });

  test('views of a disposed storage are unusable too', () => {
    const t = tensor([1, 2, 3, 4]);
    const v = t.reshape(2, 2);
    const d = t.detach();
    t.dispose();
    expect(v.isDisposed).toBe(true);
    disposedError(() => v.sum());
    disposedError(() => d.toArray());
    // dispose is idempotent
    expect(() => t.dispose()).not.toThrow();
  });

  test('a layer whose weight was disposed', () => {
    const lin = new Linear(2, 2);
    lin.weight.dispose();
    disposedError(() => lin.forward(tensor([1, 2])));
    const lora = new LoRALinear(new Linear(2, 2), { r: 1 });
    (lora.A as Tensor).dispose();
    disposedError(() => lora.forward(tensor([1, 2])));
  });

  test('an optimiser given a disposed parameter', () => {
    const p = zeros([2], { requiresGrad: true });
    p.dispose();
    disposedError(() => new Adam([p]));
  });
});

// ============================================================= tensor ops

describe('tensor methods that are not ops (the ops: the op registry, test/ops/)', () => {
  test('item() on a multi-element tensor', () => {
    const e = expectThrows(() => zeros([2, 3]).item(), RangeError,
      /^Tensor\.item: .* must be a tensor with exactly one element, got Tensor\(shape \[2, 3\], float32, cpu\)$/);
    expect(e.message).toMatch(FORMAT);
    expect(zeros([1, 1]).item()).toBe(0);
  });

  test('backward() on a non-scalar without grad', () => {
    const x = zeros([3], { requiresGrad: true });
    expectThrows(() => x.mul(2).backward(), RangeError,
      /^Tensor\.backward: grad must be given for a non-scalar output \(shape \[3\]\), got undefined$/);
    expectThrows(() => x.mul(2).backward(zeros([2])), RangeError,
      /^Tensor\.backward: grad must be a float32 tensor of shape \[3\] on cpu, got Tensor\(shape \[2\]/);
  });

  test('backward on a tensor that does not require grad', () => {
    // A state error rather than a bad argument: a plain Error (torch raises RuntimeError).
    expectThrows(() => tensor([1]).backward(), Error, /^Tensor\.backward: this tensor does not require grad/);
    expectThrows(() => zeros([2]).mul(3).sum().backward(), Error, /does not require grad/);
  });
});

// =========================================================== LoRA / layers

describe('LoRALinear', () => {
  const base = () => new Linear(64, 16);

  test('r negative, fractional or not a number', () => {
    expectThrows(() => new LoRALinear(base(), { r: -1 }), RangeError, /^LoRALinear: options\.r must be a non-negative integer, got -1$/);
    expectThrows(() => new LoRALinear(base(), { r: 2.5 }), RangeError, /^LoRALinear: options\.r must be a non-negative integer, got 2\.5$/);
    expectThrows(() => new LoRALinear(base(), { r: NaN }), RangeError, /options\.r must be a non-negative integer, got NaN$/);
    expectThrows(() => new LoRALinear(base(), { r: '4' as unknown as number }), TypeError, /^LoRALinear: options\.r must be an integer, got "4"$/);
    expectThrows(() => new LoRALinear(base(), { r: null as unknown as number }), TypeError, /options\.r must be an integer, got null$/);
  });

  test('alpha NaN / Infinity / not a number', () => {
    expectThrows(() => new LoRALinear(base(), { alpha: NaN }), RangeError, /^LoRALinear: options\.alpha must be a finite number, got NaN$/);
    expectThrows(() => new LoRALinear(base(), { alpha: Infinity }), RangeError, /options\.alpha must be a finite number, got Infinity$/);
    expectThrows(() => new LoRALinear(base(), { alpha: -Infinity }), RangeError, /got -Infinity$/);
    expectThrows(() => new LoRALinear(base(), { alpha: '8' as unknown as number }), TypeError, /options\.alpha must be a number, got "8"$/);
  });

  test('dropout 1 or -0.1', () => {
    expectThrows(() => new LoRALinear(base(), { dropout: 1 }), RangeError, /^LoRALinear: options\.dropout must be in \[0, 1\), got 1$/);
    expectThrows(() => new LoRALinear(base(), { dropout: -0.1 }), RangeError, /^LoRALinear: options\.dropout must be in \[0, 1\), got -0\.1$/);
    expectThrows(() => new LoRALinear(base(), { dropout: NaN }), RangeError, /options\.dropout must be a finite number, got NaN$/);
    expect(() => new LoRALinear(base(), { dropout: 0.99 })).not.toThrow();
  });

  test("init 'xavier'", () => {
    expectThrows(() => new LoRALinear(base(), { init: 'xavier' as 'gaussian' }), RangeError,
      /^LoRALinear: options\.init must be one of "normal", "gaussian", "kaiming", got "xavier"$/);
  });

  test('useRslora not a boolean', () => {
    expectThrows(() => new LoRALinear(base(), { useRslora: 1 as unknown as boolean }), TypeError,
      /^LoRALinear: options\.useRslora must be a boolean, got 1$/);
  });

  test('a non-Linear to wrap', () => {
    expectThrows(() => new LoRALinear(new ReLU() as unknown as Linear), TypeError,
      /^LoRALinear: origLinear must be a Linear, got an instance of ReLU$/);
    const wrapped = new LoRALinear(base());
    expectThrows(() => new LoRALinear(wrapped as unknown as Linear), TypeError,
      /^LoRALinear: origLinear must be a Linear \(this layer is already a LoRALinear\), got an instance of LoRALinear$/);
    expectThrows(() => new LoRALinear(undefined as unknown as Linear), TypeError, /origLinear must be a Linear, got undefined$/);
    expectThrows(() => new LoRALinear(zeros([2, 2]) as unknown as Linear), TypeError,
      /origLinear must be a Linear, got Tensor\(shape \[2, 2\], float32, cpu\)$/);
  });

  test('a failed constructor leaves the wrapped layer trainable', () => {
    const lin = base();
    expect(() => new LoRALinear(lin, { r: -1 })).toThrow(RangeError);
    expect(lin.weight.requiresGrad).toBe(true);
  });
});

describe('Linear', () => {
  test('constructor arguments', () => {
    expectThrows(() => new Linear(-1, 2), RangeError, /^Linear: inFeatures must be a non-negative integer, got -1$/);
    expectThrows(() => new Linear(2, 2.5), RangeError, /^Linear: outFeatures must be a non-negative integer, got 2\.5$/);
    expectThrows(() => new Linear('4' as unknown as number, 2), TypeError, /^Linear: inFeatures must be an integer, got "4"$/);
    expectThrows(() => new Linear(2, 2, { bias: 'no' as unknown as boolean }), TypeError, /^Linear: options\.bias must be a boolean, got "no"$/);
  });
});

describe('containers', () => {
  test('Sequential and ModuleList accept modules only', () => {
    expectThrows(() => new Sequential(new ReLU(), 3 as unknown as Module), TypeError, /^Sequential: modules\[1\] must be a Module, got 3$/);
    expectThrows(() => new Sequential(new ReLU()).at(1.5), RangeError, /^Sequential\.at: index must be an integer, got 1\.5$/);
    expectThrows(() => new Sequential(new ReLU()).at('0' as unknown as number), TypeError, /^Sequential\.at: index must be an integer, got "0"$/);
  });
});

// =============================================================== injectLora

describe('injectLora', () => {
  test('targetModules selecting nothing lists the Linear layers of the model', () => {
    const m = new TwoLayer();
    expectThrows(() => injectLora(m, { targetModules: ['k_proj', 'v_proj'] }), RangeError,
      /^injectLora: options\.targetModules .*k_proj.*v_proj.* selected no Linear layer; the model's Linear layers are: 'q_proj', 'out'$/);
    expectThrows(() => injectLora(m, { targetModules: /^nothing$/ }), RangeError,
      /options\.targetModules \/\^nothing\$\/ selected no Linear layer; .*'q_proj', 'out'/);
    expectThrows(() => injectLora(m, { filter: () => false }), RangeError, /^injectLora: options\.filter selected no Linear layer/);
    // Nothing was wrapped or frozen by the failed calls.
    expect(m.q_proj).toBeInstanceOf(Linear);
    expect([...m.parameters()].every((p) => p.requiresGrad)).toBe(true);
  });

  test('targetModules not an array', () => {
    expectThrows(() => injectLora(new TwoLayer(), { targetModules: 3 as unknown as string[] }), TypeError,
      /^injectLora: options\.targetModules must be a non-empty array of module names, a regex string or a RegExp, got 3$/);
    // A string is PEFT's full-match regex over the dotted name.
    expect(injectLora(new TwoLayer(), { targetModules: 'q_.*' })).toEqual(['q_proj']);
    expectThrows(() => injectLora(new TwoLayer(), { targetModules: [] }), TypeError, /options\.targetModules must be a non-empty array/);
    expectThrows(() => injectLora(new TwoLayer(), { targetModules: ['q_proj', 3] as unknown as string[] }), TypeError,
      /options\.targetModules must be a non-empty array of module names/);
  });

  test('filter not a function', () => {
    expectThrows(() => injectLora(new TwoLayer(), { filter: 'q_proj' as never }), TypeError,
      /^injectLora: options\.filter must be a function \(name, module\) => boolean, got "q_proj"$/);
    expectThrows(() => injectLora(new TwoLayer(), { filter: (() => 1) as never }), TypeError,
      /^injectLora: options\.filter\('q_proj', …\) must be a boolean, got 1$/);
  });

  test('model and LoRA options', () => {
    expectThrows(() => injectLora({} as Module), TypeError, /^injectLora: model must be a Module, got an instance of Object$/);
    expectThrows(() => injectLora(new TwoLayer(), { r: -2 }), RangeError, /^injectLora: options\.r must be a non-negative integer, got -2$/);
    expectThrows(() => injectLora(new TwoLayer(), { freezeBase: 'yes' as unknown as boolean }), TypeError,
      /^injectLora: options\.freezeBase must be a boolean, got "yes"$/);
  });
});

// ============================================================ state dicts

describe('loadStateDict', () => {
  test('wrong shape', () => {
    const lin = new Linear(3, 2);
    expectThrows(() => lin.loadStateDict({ weight: zeros([3, 2]), bias: zeros([2]) }), RangeError,
      /^Module\.loadStateDict: 'weight' has shape \[3, 2\], the module expects \[2, 3\]$/);
  });

  test('unknown key under strict', () => {
    const lin = new Linear(3, 2);
    expectThrows(() => lin.loadStateDict({ weight: zeros([2, 3]), bias: zeros([2]), scale: zeros([1]) }), RangeError,
      /^Module\.loadStateDict: unexpected keys: 'scale'$/);
    expect(lin.loadStateDict({ weight: zeros([2, 3]), bias: zeros([2]), scale: zeros([1]) }, { strict: false }))
      .toEqual({ missingKeys: [], unexpectedKeys: ['scale'] });
  });

  test('bad arguments', () => {
    const lin = new Linear(3, 2);
    expectThrows(() => lin.loadStateDict(null as never), TypeError, /^Module\.loadStateDict: stateDict must be an object mapping names to tensors, got null$/);
    expectThrows(() => lin.loadStateDict(lin.stateDict(), { strict: 'no' as unknown as boolean }), TypeError,
      /^Module\.loadStateDict: options\.strict must be a boolean, got "no"$/);
    expectThrows(() => lin.loadStateDict(lin.stateDict(), { strct: false } as never), TypeError, /unknown option "strct"/);
  });
});

// ================================================================= optimiser

describe('Adam / AdamW', () => {
  const p = () => zeros([2], { requiresGrad: true });

  test('lr 0 and -1', () => {
    const e = expectThrows(() => new Adam([p()], { lr: 0 }), RangeError, /^Adam: options\.lr must be a number > 0, got 0$/);
    expect(e.message).toMatch(FORMAT);
    expectThrows(() => new Adam([p()], { lr: -1 }), RangeError, /^Adam: options\.lr must be a number > 0, got -1$/);
    expectThrows(() => new AdamW([p()], { lr: -1 }), RangeError, /^AdamW: options\.lr must be a number > 0, got -1$/);
    expectThrows(() => new Adam([p()], { lr: NaN }), RangeError, /options\.lr must be a finite number, got NaN$/);
    expectThrows(() => new Adam([{ params: [p()], lr: 0 }]), RangeError, /^Adam: params\[0\]\.lr must be a number > 0, got 0$/);
  });

  test('betas out of range', () => {
    expectThrows(() => new Adam([p()], { betas: [1, 0.999] }), RangeError, /^Adam: options\.betas\[0\] must be in \[0, 1\), got 1$/);
    expectThrows(() => new Adam([p()], { betas: [0.9, -0.1] }), RangeError, /^Adam: options\.betas\[1\] must be in \[0, 1\), got -0\.1$/);
    expectThrows(() => new Adam([p()], { betas: [0.9, NaN] }), RangeError, /options\.betas\[1\] must be a finite number, got NaN$/);
    expectThrows(() => new Adam([p()], { betas: [0.9] as unknown as [number, number] }), TypeError,
      /^Adam: options\.betas must be a pair \[beta1, beta2\], got \[0\.9\]$/);
  });

  test('eps and weightDecay', () => {
    expectThrows(() => new Adam([p()], { eps: -1e-8 }), RangeError, /^Adam: options\.eps must be >= 0, got -1e-8$/);
    expectThrows(() => new AdamW([p()], { weightDecay: -0.1 }), RangeError, /^AdamW: options\.weightDecay must be >= 0, got -0\.1$/);
  });

  test('empty params list', () => {
    expectThrows(() => new Adam([]), RangeError, /^Adam: params is empty/);
    expectThrows(() => new Adam(new Set<Tensor>()), RangeError, /params is empty/);
  });

  test('non-tensor params', () => {
    expectThrows(() => new Adam([1, 2] as unknown as Tensor[]), TypeError,
      /^Adam: params\[0\] must be a Tensor or a parameter group \{ params, \.\.\.options \}, got 1$/);
    expectThrows(() => new Adam('weights' as unknown as Tensor[]), TypeError, /^Adam: params must be an iterable of tensors or of parameter groups, got "weights"$/);
    expectThrows(() => new Adam(null as unknown as Tensor[]), TypeError, /params must be an iterable/);
    expectThrows(() => new Adam([{ params: [p(), 3] }] as never), TypeError, /params\[1\] must be a Tensor, got 3$/);
    expectThrows(() => new Adam([zeros([2], { requiresGrad: true }).mul(2)]), TypeError,
      /^Adam: params\[0\](\.params\[0\])? is not a leaf tensor \(it was computed by MulBackward\)/);
    const q = p();
    expectThrows(() => new Adam([q, q]), RangeError, /params\[1\] appears more than once$/);
    expectThrows(() => new Adam([tensor([1], { dtype: 'int32' })]), RangeError, /params\[0\]\.dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
  });

  test('element names: a flat list says params[i], parameter groups say params[g].params[i]', () => {
    // Currently inverted (lib/optim.ts: `groups.length > 1 || list[0] !== g`):
    // a flat list gives "params[0].params[1] appears more than once" and a
    // single user group gives "params[1] must be a Tensor".
    const q = p();
    expectThrows(() => new Adam([q, q]), RangeError, /^Adam: params\[1\] appears more than once$/);
    expectThrows(() => new Adam([tensor([1], { dtype: 'int32' })]), RangeError,
      /^Adam: params\[0\]\.dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
    expectThrows(() => new Adam([{ params: [p(), 3] }] as never), TypeError, /^Adam: params\[0\]\.params\[1\] must be a Tensor, got 3$/);
    expectThrows(() => new Adam([{ params: [p()] }, { params: [p(), 3] }] as never), TypeError,
      /^Adam: params\[1\]\.params\[1\] must be a Tensor, got 3$/);
  });
});

// ================================================================= devices

describe('devices', () => {
  (cudaAvailable ? test.skip : test)("device 'cuda' when CUDA is not available", () => {
    expectThrows(() => tensor([1], { device: 'cuda' }), RangeError, /^tensor: options\.device "cuda" is not available \(.+\)$/);
    expectThrows(() => zeros([1], { device: 'cuda:0' }), RangeError, /options\.device "cuda:0" is not available/);
    expectThrows(() => new Linear(2, 2, { device: 'cuda' }), RangeError, /"cuda" is not available/);
    expectThrows(() => zeros([1]).to('cuda'), RangeError, /^Tensor\.to: device "cuda" is not available/);
    expectThrows(() => new Linear(2, 2).to('cuda'), RangeError, /^Module\.to: device "cuda" is not available/);
  });

  (cudaAvailable ? test : test.skip)('a CUDA device index that does not exist', () => {
    expectThrows(() => tensor([1], { device: 'cuda:99' }), RangeError, /"cuda:99" does not exist/);
  });

  test("device 'tpu'", () => {
    expectThrows(() => tensor([1], { device: 'tpu' as 'cpu' }), RangeError,
      /^tensor: options\.device must be 'cpu', 'cuda' or 'cuda:N', got "tpu"$/);
    expectThrows(() => zeros([1]).to('tpu' as 'cpu'), RangeError,
      /^Tensor\.to: target must be a device \('cpu', 'cuda' or 'cuda:N'\) or a dtype \('float32', 'float64', 'int32', 'bfloat16' or 'float16'\), got "tpu"$/);
    expectThrows(() => new Linear(2, 2).to('tpu' as 'cpu'), RangeError, /^Module\.to: device must be 'cpu', 'cuda' or 'cuda:N', got "tpu"$/);
    expectThrows(() => tensor([1], { device: 0 as unknown as 'cpu' }), TypeError, /options\.device must be 'cpu', 'cuda' or 'cuda:N', got 0$/);
  });
});

// ===================================================== native failures

describe('native failures come back as JS Errors', () => {
  test('an allocation too large for the machine is an Error with a code, not a crash', () => {
    // 2^48 float32 elements = 1 PiB: more than any x86-64 / arm64 user address space.
    let caught: unknown;
    try {
      zeros([2 ** 24, 2 ** 24]);
    } catch (e) {
      caught = e;
    }
    // Native errors are made in Node's main realm, so instanceof against jest's
    // sandboxed Error global is false; check the brand instead.
    expect(Object.prototype.toString.call(caught)).toBe('[object Error]');
    expect((caught as NodeJS.ErrnoException).code).toBe('ERR_OUT_OF_MEMORY');
    expect((caught as Error).message).toMatch(/out of memory/);
    expect(() => randn([2 ** 24, 2 ** 24])).toThrow(/out of memory/);
    // The process is still healthy afterwards.
    expect(tensor([1, 2]).add(1).toArray()[1]).toBe(3);
  });

  // The same bad calls again in a child process, so that a crash (abort, V8
  // fatal error, segfault) shows up as a failing test instead of killing jest.
  const root = path.resolve(__dirname, '..');
  const bootstrap = `
    const ts = require('typescript');
    const fs = require('fs');
    require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'), {
      fileName: f, compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    }).outputText, f);
    const L = require(${JSON.stringify(path.join(root, 'lib', 'index.ts'))});
    const attempt = (name, fn) => {
      try { fn(); console.log(name + ': no error'); }
      catch (e) { console.log(name + ': ' + (e && e.constructor && e.constructor.name) + (e && e.code ? ' [' + e.code + ']' : '') + ': ' + (e && e.message)); }
    };
  `;
  const runChild = (body: string) => spawnSync(process.execPath, ['-e', bootstrap + body], {
    cwd: root, encoding: 'utf8', timeout: 120_000,
  });

  test('a battery of bad calls in a child process: every one throws, the process exits normally', () => {
    const r = runChild(`
      attempt('oom', () => L.zeros([2 ** 24, 2 ** 24]));
      attempt('oom-rand', () => L.rand([2 ** 24, 2 ** 24], { dtype: 'float64' }));
      attempt('disposed', () => { const t = L.zeros([2]); t.dispose(); t.add(t); });
      attempt('disposed-grad', () => { const x = L.zeros([2], { requiresGrad: true }); const y = x.mul(x).sum(); x.dispose(); y.backward(); });
      attempt('second-backward', () => { const x = L.zeros([2], { requiresGrad: true }); const y = x.mul(x).sum(); y.backward(); y.backward(); });
      attempt('inplace-after-use', () => { const x = L.ones([2], { requiresGrad: true }); const w = L.ones([2]); const y = x.mul(w).sum(); w.fill_(2); y.backward(); });
      attempt('shape', () => L.zeros([2, -1]));
      attempt('matmul', () => L.zeros([2, 3]).matmul(L.zeros([4, 5])));
      attempt('lora', () => new L.LoRALinear(new L.Linear(64, 8)).forward(L.zeros([32])));
      console.log('done');
    `);
    const out = r.stdout ?? '';
    expect({ status: r.status, signal: r.signal, stderr: r.stderr.slice(-2000) }).toEqual({ status: 0, signal: null, stderr: '' });
    expect(out).toMatch(/^oom: Error \[ERR_OUT_OF_MEMORY\]: out of memory/m);
    expect(out).toMatch(/^oom-rand: Error \[ERR_OUT_OF_MEMORY\]/m);
    expect(out).toMatch(/^disposed: Error \[ERR_TENSOR_DISPOSED\]/m);
    expect(out).toMatch(/^disposed-grad: Error \[ERR_TENSOR_DISPOSED\]/m);
    expect(out).toMatch(/^second-backward: Error: .*backward through the graph a second time/m);
    expect(out).toMatch(/^inplace-after-use: Error: .*modified in place/m);
    expect(out).toMatch(/^shape: RangeError: /m);
    expect(out).toMatch(/^matmul: RangeError: /m);
    expect(out).toMatch(/^lora: RangeError: LoRALinear\.forward: x\.shape\[-1\] must be 64 \(inFeatures\), got 32$/m);
    expect(out).not.toMatch(/no error/);
    expect(out).toMatch(/^done$/m);
  });

  test('a shape whose element count overflows is refused up front (and cannot crash the process later)', () => {
    // 2^32 * 2^32 = 2^64 elements wraps to 0 in the native int64 element count:
    // zeros() then "succeeds" with no storage, and tolist() on the result dies
    // with a V8 fatal error (invalid array size), taking the process with it.
    const r = runChild(`
      attempt('overflow', () => { const t = L.zeros([2 ** 32, 2 ** 32]); console.log('created numel=' + t.numel + ' stored=' + t.toArray().length); t.tolist(); });
      console.log('done');
    `);
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    expect(r.stdout).toMatch(/^overflow: RangeError: zeros: /m);
  }, 130_000);
});

// ========================================== naming and validation gaps

describe('messages name the entry point that was called', () => {
  test.each<[string, () => unknown, RegExp]>([
    ['zeros', () => zeros([2, -1]), /^zeros: shape\[1\] must be a non-negative integer, got -1$/],
    ['ones', () => ones([1.5]), /^ones: shape\[0\] must be a non-negative integer, got 1\.5$/],
    ['zeros (device)', () => zeros([1], { device: 'tpu' as 'cpu' }), /^zeros: options\.device must be/],
  ])('%s', (_name, fn, re) => {
    expect(fn).toThrow(re);
  });

  test('the activation layers name their own forward, not the F function they share', () => {
    expectThrows(() => new ReLU().forward('x' as unknown as Tensor), TypeError, /^ReLU\.forward: x must be a Tensor, got "x"$/);
    expectThrows(() => new GELU({ approximate: 'tanh' }).forward(tensor([1], { dtype: 'int32' })), RangeError,
      /^GELU\.forward: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
    expectThrows(() => new SiLU().forward(null as unknown as Tensor), TypeError, /^SiLU\.forward: x must be a Tensor, got null$/);
  });

  test('Adam with a non-tensor after a tensor names the bad element', () => {
    // Currently: "Adam: params[0] must be a Tensor or a parameter group ..., got Tensor(shape [2], ...)"
    // i.e. it blames the first (valid) element.
    const w = zeros([2], { requiresGrad: true });
    expectThrows(() => new Adam([w, 'bias'] as unknown as Tensor[]), TypeError, /params\[1\] must be a Tensor.*got "bias"$/);
  });

  test('Module.zeroGrad validates setToNone like Adam.zeroGrad does', () => {
    const lin = new Linear(2, 2);
    lin.forward(zeros([2])).sum().backward();
    const opt = new Adam([...lin.parameters()]);
    expectThrows(() => opt.zeroGrad('false' as unknown as boolean), TypeError, /^Adam\.zeroGrad: setToNone must be a boolean, got "false"$/);
    expect(lin.weight.grad).not.toBeNull();
    // Module.zeroGrad('false') currently treats the string as truthy and frees every gradient.
    expectThrows(() => lin.zeroGrad('false' as unknown as boolean), TypeError, /^Module\.zeroGrad: setToNone must be a boolean, got "false"$/);
    expect(lin.weight.grad).not.toBeNull();
  });
});

describe('when no addon loads', () => {
  test('the error lists each file tried, with the glibc it needs against the one this system has', () => {
    const fs = require('fs') as typeof import('fs');
    const os = require('os') as typeof import('os');
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-loader-'));
    try {
      const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
      fs.mkdirSync(dir, { recursive: true });
      // Not a loadable binary, but with the version needs a binary built on a newer glibc has.
      fs.writeFileSync(path.join(dir, 'lora-cuda.node'), Buffer.from('\0GLIBC_2.17\0GLIBC_2.99\0GLIBC_2.2.5\0'));
      const { loadError } = require('../lib/native') as typeof import('../lib/native');
      const { glibcVersion } = require('../lib/platform') as typeof import('../lib/platform');
      const err = loadError(root, new Error('No native build was found'));
      expect((err as NodeJS.ErrnoException).code).toBe('ERR_LORA_ADDON_NOT_FOUND');
      const have = glibcVersion();
      expect(have).toMatch(/^2\.\d+$/);
      expect(err.message).toContain(`prebuilds/${process.platform}-${process.arch}/lora-cuda.node: `);
      expect(err.message).toContain(`(it needs glibc 2.99, this system has ${have})`);
      expect(err.message).toContain(`This system has glibc ${have}. The package ships a prebuilt binary for linux-x64 (glibc 2.99 or newer, Node.js 20 or newer); on an older system build from source`);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
