import { Adam, F, Linear, Module, Tensor, getLoraAB, injectLora, manualSeed, mergeLora, qkvFilter, randn } from 'lora-cuda';

// A self-attention block whose projections follow the usual q/k/v/o naming.
class Attention extends Module {
  q_proj = new Linear(64, 64);
  k_proj = new Linear(64, 64);
  v_proj = new Linear(64, 64);
  o_proj = new Linear(64, 64);

  forward(x: Tensor): Tensor {
    const q = this.q_proj.forward(x);
    const k = this.k_proj.forward(x);
    const v = this.v_proj.forward(x);
    const att = q.matmul(k.transpose(-2, -1)).mul(1 / Math.sqrt(64)).softmax(-1);
    return this.o_proj.forward(att.matmul(v));
  }
}

manualSeed(0);
const model = new Attention();

// Wrap q/k/v in LoRALinear (rank 8, scale alpha/r = 4); everything else is frozen.
const replaced = injectLora(model, { r: 8, alpha: 32, dropout: 0, filter: qkvFilter });
console.log('replaced layers:', replaced); // [ 'q_proj', 'k_proj', 'v_proj' ]

// Train only the adapters.
const optimizer = new Adam(getLoraAB(model), { lr: 1e-3 });
const x = randn([4, 16, 64]); // [batch, seq, d_model]
const target = randn([4, 16, 64]);
for (let step = 0; step < 20; step++) {
  const loss = F.mseLoss(model.forward(x), target);
  optimizer.zeroGrad();
  loss.backward();
  optimizer.step();
  if (step % 5 === 0) console.log(`step ${step}: loss ${loss.item().toFixed(4)}`);
}

// Fold scale * B A into each weight: inference costs one matrix product per layer again.
mergeLora(model);
