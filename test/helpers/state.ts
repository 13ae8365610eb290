// Snapshots of what a failed call must not change: a tensor's exact bits, a module's tree and every
// parameter (shape, dtype, requiresGrad, bits), an optimiser's state.
import { Adam, LoRALinear, Module, Tensor } from '../../lib';

/** The tensor's data as hex: equal strings mean bit-identical data (-0, NaN payloads included). */
export function bits(t: Tensor): string {
  const a = t.toArray();
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
}

export function moduleState(model: Module): unknown {
  return {
    tree: [...model.namedModules()].map(([n, m]) => [n, m.constructor.name, m instanceof LoRALinear ? m.merged : null]),
    params: [...model.namedParameters()].map(([n, p]) => [n, p.shape.join('x'), p.dtype, p.requiresGrad, bits(p)]),
  };
}

export function optimizerState(opt: Adam): unknown {
  return {
    groups: opt.paramGroups.map(({ params, ...o }) => ({ ...o, params: params.map(bits) })),
    state: [...opt.state.entries()].map(([p, s]) => [bits(p), s.step, bits(s.expAvg), bits(s.expAvgSq)]),
  };
}
