// The global random generator. Values come from a counter-based generator
// (Philox) in native code: each random call takes the next `offset`, and
// element i of that call depends only on (seed, offset, i). Results are thus
// reproducible after manualSeed() and identical on every device.
import { checkInt } from './errors';

const DEFAULT_SEED = 67280421310721n;
let seed = DEFAULT_SEED;
let offset = 0n;

/** Seeds the global generator (like torch.manual_seed). */
export function manualSeed(n: number | bigint): void {
  if (typeof n === 'bigint') {
    if (n < 0n || n >= 1n << 64n) throw new RangeError(`manualSeed: seed must be in [0, 2^64), got ${n}`);
    seed = n;
  } else {
    checkInt('manualSeed', 'seed', n);
    seed = BigInt(n);
  }
  offset = 0n;
}

/** The (seed, offset) for one random call; advances the generator. */
export function nextRandomKey(): { seed: bigint; offset: bigint } {
  const key = { seed, offset };
  offset += 1n;
  return key;
}

/** The current seed and position, e.g. to resume a run reproducibly. */
export function getRngState(): { seed: bigint; offset: bigint } {
  return { seed, offset };
}

export function setRngState(state: { seed: bigint; offset: bigint }): void {
  if (typeof state?.seed !== 'bigint' || typeof state?.offset !== 'bigint') {
    throw new TypeError('setRngState: state must be { seed: bigint, offset: bigint }');
  }
  // Both reach the native generator as unsigned 64-bit integers: out of range they would wrap.
  for (const k of ['seed', 'offset'] as const) {
    if (state[k] < 0n || state[k] >= 1n << 64n) throw new RangeError(`setRngState: state.${k} must be in [0, 2^64), got ${state[k]}`);
  }
  seed = state.seed;
  offset = state.offset;
}
