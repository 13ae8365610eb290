// Activation checkpointing (torch.utils.checkpoint's reentrant form): forward runs a block
// without a graph and keeps only its input; backward runs the block again with a graph, from
// the same input and the same random generator state (so every dropout mask is drawn again
// bit for bit from the same Philox keys), and backpropagates through that. The gradients are
// those of the run without checkpointing, bit for bit: the same kernels on the same values.
import type { Tensor } from './tensor';
import { defineFunction, enableGrad, noGrad, releaseIntermediate, runBackward } from './autograd';
import { getRngState, setRngState } from './random';
import { detach } from './ops/shape';

type Block = (x: Tensor) => Tensor;
type RngState = { seed: bigint; offset: bigint };
type Args = [fn: Block, rng: RngState, constants: (Tensor | null)[], x: Tensor, ...params: Tensor[]];

const Checkpoint = defineFunction<Args, { fn: Block; rng: RngState; nParams: number }>({
  name: 'CheckpointBackward',
  forward(ctx, fn, rng, constants, x, ...params) {
    ctx.fn = fn;
    ctx.rng = rng;
    ctx.nParams = params.length;
    // x and the block's constant tensors (rotary tables, key starts) must still be there, unchanged,
    // when backward recomputes: saved, so a change or a dispose fails with the usual message.
    ctx.saveForBackward(x, ...constants);
    const y = noGrad(() => fn(x));
    return y._store === x._store ? detach(y).clone() : y;
  },
  backward(ctx, g) {
    const x = ctx.savedTensors[0] as Tensor;
    const needX = ctx.needsInputGrad[3];
    const now = getRngState();
    setRngState(ctx.rng);
    let dx: Tensor | null = null;
    try {
      // A leaf sharing x's storage: the recomputed graph ends there, its gradient is x's.
      const xd = detach(x);
      if (needX) xd.requiresGrad_(true);
      const y = enableGrad(() => ctx.fn(xd));
      // Only y's node is needed from here, not its values (the forward's output was kept instead).
      if (y._store !== xd._store) releaseIntermediate(y);
      try {
        // g stays the caller's (userGrad): the outer engine frees it. The block's parameters
        // collect their gradients in .grad here, as they would in the run without checkpointing.
        if (y.requiresGrad) runBackward(y, g, true);
      } finally {
        y.dispose();
      }
      dx = xd.grad;
    } finally {
      setRngState(now);
    }
    return [null, null, null, dx, ...new Array<null>(ctx.nParams).fill(null)];
  },
});

/**
 * y = fn(x), recorded as one node that keeps x (and `constants`) only; backward recomputes
 * fn's forward with the random state it started with. `params`: every tensor fn reads that
 * may need a gradient (they get it in .grad as usual). Only where grad mode is on and
 * something needs a gradient; else fn(x) as is.
 */
export function checkpoint(fn: Block, x: Tensor, params: Iterable<Tensor>, constants: (Tensor | null | undefined)[] = []): Tensor {
  const ps = [...params].filter((p) => p.requiresGrad);
  return Checkpoint(fn, getRngState(), constants.map((c) => c ?? null), x, ...ps);
}
