// The model of test/helpers/save-child.ts: 48 layers of r = 64 on 256 features, 12 MiB of adapter
// weights, so that writing them takes a while.
import { Linear, Module, ModuleList, Tensor, injectLora, manualSeed, noGrad, randn } from '../../lib';
import type { LoRALinear } from '../../lib';

export class Stack extends Module {
  layers: ModuleList;
  constructor() {
    super();
    manualSeed(0);
    this.layers = new ModuleList(Array.from({ length: 48 }, () => new Linear(256, 256, { bias: false })));
  }
  forward(x: Tensor): Tensor {
    let h = x;
    for (const l of this.layers) h = l.forward(h) as Tensor;
    return h;
  }
}

/** A Stack with LoRA of the given alpha; B drawn from `seed`. */
export function stackWithLora(alpha: number, seed: number): Stack {
  const m = new Stack();
  injectLora(m, { r: 64, alpha });
  manualSeed(seed);
  noGrad(() => {
    for (const l of m.layers) (l as LoRALinear).B!.copy_(randn([256, 64]));
  });
  return m;
}
