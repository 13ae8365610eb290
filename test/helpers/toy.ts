// A small transformer-shaped model for tests: attention with q/k/v/o
// projections, a GELU MLP and a classification head, built from the public API.
import { Module, Linear, ModuleList, GELU, Tensor } from '../../lib';

export class Attention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  constructor(readonly dim: number) {
    super();
    this.q_proj = new Linear(dim, dim);
    this.k_proj = new Linear(dim, dim);
    this.v_proj = new Linear(dim, dim);
    this.o_proj = new Linear(dim, dim);
  }
  forward(x: Tensor): Tensor {
    const q = this.q_proj.forward(x) as Tensor;
    const k = this.k_proj.forward(x) as Tensor;
    const v = this.v_proj.forward(x) as Tensor;
    const scores = q.matmul(k.transpose(-1, -2)).mul(1 / Math.sqrt(this.dim));
    return this.o_proj.forward(scores.softmax(-1).matmul(v)) as Tensor;
  }
}

export class MLP extends Module {
  up_proj: Linear;
  act = new GELU();
  down_proj: Linear;
  constructor(dim: number, hidden: number) {
    super();
    this.up_proj = new Linear(dim, hidden);
    this.down_proj = new Linear(hidden, dim);
  }
  forward(x: Tensor): Tensor {
    return this.down_proj.forward(this.act.forward(this.up_proj.forward(x))) as Tensor;
  }
}

export class Block extends Module {
  self_attn: Attention;
  mlp: MLP;
  constructor(dim: number) {
    super();
    this.self_attn = new Attention(dim);
    this.mlp = new MLP(dim, dim * 2);
  }
  forward(x: Tensor): Tensor {
    const h = x.add(this.self_attn.forward(x));
    return h.add(this.mlp.forward(h));
  }
}

export class ToyTransformer extends Module {
  layers: ModuleList;
  lm_head: Linear;
  constructor(readonly dim = 16, nLayers = 2, nClasses = 5) {
    super();
    this.layers = new ModuleList(Array.from({ length: nLayers }, () => new Block(dim)));
    this.lm_head = new Linear(dim, nClasses, { bias: false });
  }
  /** x [batch, seq, dim] -> logits [batch, seq, classes] */
  forward(x: Tensor): Tensor {
    let h = x;
    for (const layer of this.layers) h = layer.forward(h) as Tensor;
    return this.lm_head.forward(h);
  }
}
