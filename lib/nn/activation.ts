// The activations behind F.relu, F.gelu, F.silu and the ReLU, GELU and SiLU layers, checked under
// the name of the function the user called.
import type { Tensor } from '../tensor';
import { assertTensor, requireFloat } from '../checks';
import * as elementwise from '../ops/elementwise';

export function activation(where: string, x: unknown, op: 'relu' | 'gelu' | 'geluTanh' | 'silu' | 'sigmoid' | 'tanh'): Tensor {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  return elementwise.unary(op, x);
}
