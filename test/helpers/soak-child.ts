// The loops of test/soak.test.ts, run in a child process started with --expose-gc:
//
//   node --expose-gc -r ./test/helpers/ts-register.js test/helpers/soak-child.ts <scenario> [cpu|cuda]
//
// Each scenario runs its loop and samples memory at fixed iterations, right after two full garbage
// collections (so that unreachable tensors have been finalized and the numbers are the live set, not
// whatever the collector has not reached yet). It prints one JSON line: { iterations, samples, ... }.
import {
  Adam, F, Linear, LoRALinear, Module, ReLU, Tensor, cuda, injectLora, manualSeed, mergeLora, nativeMemoryBytes, randn, tensor,
  unmergeLora, zeros, noGrad,
} from '../../lib';
import type { DeviceSpec } from '../../lib';

interface Sample {
  iteration: number;
  heapUsed: number;
  rss: number;
  /** Bytes held by this thread's tensors (CPU and GPU). */
  native: number;
  /** Bytes allocated on cuda:0 (0 on the CPU). */
  device: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('soak-child: run node with --expose-gc');

const onCuda = process.argv[3] === 'cuda';

function sample(iteration: number): Sample {
  gc!();
  gc!();
  if (onCuda) cuda.synchronize(); // frees queued on the stream have happened
  const m = process.memoryUsage();
  return { iteration, heapUsed: m.heapUsed, rss: m.rss, native: nativeMemoryBytes(), device: onCuda ? cuda.memoryStats().allocated : 0 };
}

class Net extends Module {
  lora: LoRALinear;
  act = new ReLU();
  head: Linear;
  constructor(device: DeviceSpec) {
    super();
    this.lora = new LoRALinear(new Linear(16, 32, { device }), { r: 4, alpha: 8, dropout: 0.1 });
    this.head = new Linear(32, 4, { device });
    this.head.requiresGrad_(false);
  }
  forward(x: Tensor): Tensor {
    return this.head.forward(this.act.forward(this.lora.forward(x)));
  }
}

/** 5,000 steps of LoRA training (forward, loss, backward, Adam), intermediates left to the collector. */
function train(device: DeviceSpec): object {
  const steps = 5000;
  manualSeed(0);
  const model = new Net(device);
  const opt = new Adam([model.lora.A!, model.lora.B!], { lr: 1e-2 });
  const x = randn([8, 16], { device });
  const target = randn([8, 4], { device });
  const samples: Sample[] = [sample(0)];
  const losses: number[] = [];
  for (let step = 1; step <= steps; step++) {
    const loss = F.mseLoss(model.forward(x), target);
    opt.zeroGrad();
    loss.backward();
    opt.step();
    if (step === 1 || step === steps) losses.push(loss.item());
    if (step % 250 === 0) samples.push(sample(step));
  }
  return { iterations: steps, samples, firstLoss: losses[0], lastLoss: losses[1] };
}

/** 5,000 rounds of tensors made and freed every way: dispose(), views, and the garbage collector. */
function tensors(device: DeviceSpec): object {
  const rounds = 5000;
  manualSeed(1);
  const samples: Sample[] = [sample(0)];
  const data = new Float32Array(64).map((_, i) => i);
  let checksum = 0;
  for (let i = 1; i <= rounds; i++) {
    const a = randn([64], { device });
    const b = tensor(data, { device });
    const c = a.add(b).reshape(8, 8);
    const d = c.detach(); // shares c's storage
    checksum += d.sum().item();
    c.dispose(); // frees it for both
    if (!d.isDisposed) throw new Error('a view outlived the storage it shares');
    zeros([32], { device }); // never disposed: the finalizer frees it
    const lin = new Linear(8, 8, { device });
    if (i % 2) lin.weight.dispose(); // half explicitly, the rest by the collector
    a.dispose();
    a.dispose(); // idempotent
    if (i % 250 === 0) samples.push(sample(i));
  }
  return { iterations: rounds, samples, checksum };
}

class Block extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  constructor(device: DeviceSpec) {
    super();
    this.q_proj = new Linear(16, 16, { device });
    this.k_proj = new Linear(16, 16, { device });
    this.v_proj = new Linear(16, 16, { device });
    this.o_proj = new Linear(16, 16, { device });
  }
  forward(x: Tensor): Tensor {
    return this.o_proj.forward(this.v_proj.forward(x));
  }
}

/** 1,000 cycles of injectLora, mergeLora, unmergeLora and disposing the model. */
function loraCycles(device: DeviceSpec): object {
  const cycles = 1000;
  manualSeed(2);
  const samples: Sample[] = [sample(0)];
  let maxDrift = 0;
  for (let i = 1; i <= cycles; i++) {
    const model = new Block(device);
    const w0 = model.q_proj.weight.toArray();
    injectLora(model, { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
    const q = model.q_proj as unknown as LoRALinear;
    noGrad(() => q.B!.copy_(randn([16, 4], { device })));
    if (mergeLora(model, { safe: true }).length !== 2) throw new Error('mergeLora did not merge both layers');
    if (unmergeLora(model).length !== 2) throw new Error('unmergeLora did not unmerge both layers');
    const w1 = q.origLinear.weight.toArray();
    for (let k = 0; k < w0.length; k++) maxDrift = Math.max(maxDrift, Math.abs(w1[k] - w0[k]));
    for (const p of model.parameters()) p.dispose();
    if (i % 50 === 0) samples.push(sample(i));
  }
  return { iterations: cycles, samples, maxDrift };
}

const scenarios: Record<string, (device: DeviceSpec) => object> = { train, tensors, 'lora-cycles': loraCycles };
const [name, device = 'cpu'] = process.argv.slice(2);
const run = scenarios[name];
if (!run) throw new Error(`soak-child: unknown scenario ${JSON.stringify(name)} (known: ${Object.keys(scenarios).join(', ')})`);
const t0 = Date.now();
const result = run(device as DeviceSpec);
process.stdout.write(`${JSON.stringify({ scenario: name, device, ms: Date.now() - t0, ...result })}\n`);
