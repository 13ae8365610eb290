// Bodies of the workers that test/helpers/terminate-child.ts terminates while they call into the
// library. Each posts 'ready' once its loop is about to start, then never returns: it is stopped
// by worker.terminate() or by reaching its resourceLimits.
import * as fs from 'fs';
import * as path from 'path';
import { parentPort } from 'worker_threads';
import {
  Adam, F, Linear, LoRALinear, Sequential, injectLora, loadAdapter, loadSafetensors, manualSeed, randn,
  saveAdapter, tensor, zeros,
} from '../../lib';

export type Busy = 'idle' | 'allocating' | 'training' | 'saving' | 'reading' | 'filling-heap';

const ready = () => parentPort!.postMessage('ready');

function model(): Sequential {
  manualSeed(1);
  const m = new Sequential(new Linear(32, 32), new Linear(32, 32));
  injectLora(m, { r: 4, alpha: 8 });
  return m;
}

/** Runs the loop of `kind`; files go to a new directory in `parent` (which the caller removes). */
export async function busy(kind: Busy, parent: string): Promise<never> {
  const dir = fs.mkdtempSync(path.join(parent, `${kind}-`));
  switch (kind) {
    case 'idle': {
      // Tensors live, some referenced and some only reachable by the garbage collector's finalizers.
      const held = [randn([64, 64]), zeros([1000]), tensor([1, 2, 3], { dtype: 'int32' })];
      for (let i = 0; i < 100; i++) randn([16, 16]).mul(2);
      setInterval(() => held.length, 1000);
      ready();
      return new Promise<never>(() => undefined);
    }
    case 'allocating': {
      ready();
      for (;;) {
        const t = randn([64, 64]);
        const u = t.mul(2).add(t); // left to the garbage collector
        u.sum().item();
        t.dispose();
      }
    }
    case 'training': {
      manualSeed(2);
      const lora = new LoRALinear(new Linear(96, 80), { r: 8, alpha: 16, dropout: 0.1 });
      const opt = new Adam([lora.A!, lora.B!], { lr: 1e-2 });
      const x = randn([64, 96]);
      const target = randn([64, 80]);
      ready();
      for (;;) {
        const l = F.mseLoss(lora.forward(x), target);
        opt.zeroGrad();
        l.backward();
        opt.step();
        l.item();
        l.dispose();
      }
    }
    case 'saving': {
      const m = model();
      ready();
      for (;;) await saveAdapter(m, dir);
    }
    case 'reading': {
      const m = model();
      await saveAdapter(m, dir);
      ready();
      for (;;) {
        const ts = await loadSafetensors(path.join(dir, 'adapter_model.safetensors'));
        for (const t of Object.values(ts)) t.toArray();
        await loadAdapter(model(), dir);
      }
    }
    case 'filling-heap': {
      // Keeps everything: the worker runs into its resourceLimits (maxOldGenerationSizeMb), mostly
      // while the addon makes the arrays that toArray() returns.
      const t = tensor([1, 2]);
      const kept: unknown[] = [];
      ready();
      for (let i = 0; ; i++) {
        kept.push(t.toArray());
        if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
      }
    }
  }
}
