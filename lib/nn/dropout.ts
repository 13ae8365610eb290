// Dropout (torch.nn.Dropout and F.dropout): in training, each element is zeroed with
// probability p and the others scaled by 1 / (1 - p); in eval mode (or p = 0) the input
// itself is returned. The mask comes from the global generator (manualSeed), the same
// on every device.
import type { Tensor } from '../tensor';
import { assertTensor, requireFloat } from '../checks';
import { nextRandomKey } from '../random';
import * as ops from '../ops/dropout';
import * as elementwise from '../ops/elementwise';
import { Module } from './module';
import { checkBool, checkKnownKeys, checkNumber, checkOptions, rangeError } from '../errors';
import { pyFloat } from '../printing';

function checkP(where: string, what: string, p: unknown): number {
  checkNumber(where, what, p);
  if ((p as number) < 0 || (p as number) > 1) throw rangeError(where, what, 'in [0, 1]', p);
  return p as number;
}

export function dropoutImpl(where: string, x: unknown, p: number, training: boolean): Tensor {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  x._checkLive(where);
  if (!training || p === 0) return x;
  // torch: p = 1 zeroes everything (x * 0, so NaN stays NaN), with a zero gradient.
  if (p === 1) return elementwise.scalar('mul', x, 0);
  return ops.dropout(x, p, nextRandomKey());
}

/**
 * Zeroes each element of x with probability p (in [0, 1], default 0.5) and scales the rest by
 * 1 / (1 - p) when training (default true); returns x itself otherwise. As torch's F.dropout.
 */
export function dropout(x: Tensor, p = 0.5, training = true): Tensor {
  const where = 'F.dropout';
  checkP(where, 'p', p);
  checkBool(where, 'training', training);
  return dropoutImpl(where, x, p, training);
}

/** torch.nn.Dropout(p): active in training mode (train()), the identity in eval mode (eval()). */
export class Dropout extends Module {
  readonly p: number;

  constructor(p = 0.5, options?: { inplace?: false }) {
    super();
    const where = 'Dropout';
    this.p = checkP(where, 'p', p);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['inplace']);
    if (o.inplace !== undefined && o.inplace !== false) {
      throw rangeError(where, 'options.inplace', 'false (in-place dropout is not supported: the input may be needed for backward)', o.inplace);
    }
  }

  forward(x: Tensor): Tensor {
    return dropoutImpl('Dropout.forward', x, this.p, this.training);
  }

  extraRepr(): string {
    return `p=${pyFloat(this.p)}, inplace=False`;
  }
}
