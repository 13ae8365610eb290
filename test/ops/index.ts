// The op registry: one entry per public op (see types.ts for what an entry
// holds and which suites read it). A new op gets an entry here;
// test/op-registry.test.ts fails for an exported op without one.
import { TENSOR_OPS } from './tensor-ops';
import { FUNCTIONAL_OPS } from './functional';
import { LAYER_OPS } from './layers';
import { SELECT_OPS } from './select-ops';
import { MODULE_OPS } from './modules';
import { VIEW_OPS } from './views';
import type { OpInfo, OpSample } from './types';

export const OPS: OpInfo[] = [...TENSOR_OPS, ...FUNCTIONAL_OPS, ...LAYER_OPS, ...SELECT_OPS, ...MODULE_OPS, ...VIEW_OPS];

export * from './types';
export * from './inputs';

export const isDifferentiable = (op: OpInfo): boolean => op.differentiable !== false;

/** [op, sample] pairs of the finite-difference gradient checks. */
export function gradcheckSamples(): [OpInfo, OpSample][] {
  return OPS.filter(isDifferentiable).flatMap((op) => op.samples.filter((s) => s.gradcheck !== false).map((s): [OpInfo, OpSample] => [op, s]));
}

/** [op, sample] pairs of the CPU/CUDA parity suite. */
export function paritySamples(): [OpInfo, OpSample][] {
  return OPS.filter((op) => op.devices.includes('cuda')).flatMap((op) => op.samples.filter((s) => s.parity !== false).map((s): [OpInfo, OpSample] => [op, s]));
}

/** A test title for a sample. */
export const title = (op: OpInfo, s: OpSample): string => `${op.name}: ${s.name}`;
