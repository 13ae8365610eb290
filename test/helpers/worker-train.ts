// Body of the worker threads of test/workers.test.ts (and, called directly, the same computation on
// the main thread): a short seeded LoRA training run on tensors of its own.
import { Adam, F, Linear, LoRALinear, Tensor, manualSeed, nativeMemoryBytes, randn, tensor } from '../../lib';

export interface TrainResult {
  seed: number;
  /** nativeMemoryBytes() before anything was made: each thread counts only its own tensors. */
  nativeAtStart: number;
  /** The trained A and B, as hex of their bits. */
  A: string;
  B: string;
  loss: number;
}

function hex(t: Tensor): string {
  const a = t.toArray();
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
}

export function train(seed: number, steps: number): TrainResult {
  const nativeAtStart = nativeMemoryBytes();
  manualSeed(seed);
  // Large enough that the matrix products go through BLAS and the thread pool.
  const lora = new LoRALinear(new Linear(96, 80), { r: 8, alpha: 16, dropout: 0.1 });
  const opt = new Adam([lora.A!, lora.B!], { lr: 1e-2 });
  const x = randn([64, 96]);
  const target = randn([64, 80]);
  let loss = 0;
  for (let i = 0; i < steps; i++) {
    const l = F.mseLoss(lora.forward(x), target);
    opt.zeroGrad();
    l.backward();
    opt.step();
    loss = l.item();
    l.dispose();
  }
  return { seed, nativeAtStart, A: hex(lora.A!), B: hex(lora.B!), loss };
}

/** What a worker can do with a tensor posted to it: it arrives as a plain object, not a tensor. */
export function useReceived(received: unknown): string[] {
  const outcomes: string[] = [];
  const attempt = (name: string, fn: () => unknown) => {
    try {
      fn();
      outcomes.push(`${name}: no error`);
    } catch (e) {
      outcomes.push(`${name}: ${(e as Error).constructor.name}: ${(e as Error).message}`);
    }
  };
  attempt('instanceof', () => {
    if (!(received instanceof Tensor)) throw new TypeError('not a Tensor');
  });
  attempt('F.relu', () => F.relu(received as Tensor));
  attempt('tensor().add', () => tensor([1, 2, 3]).add(received as Tensor));
  // Even dressed up as a Tensor, its handle is an empty object the addon refuses.
  attempt('as a Tensor', () => (Object.setPrototypeOf(received, Tensor.prototype) as Tensor).toArray());
  return outcomes;
}
