import * as v8 from 'v8';
import * as vm from 'vm';

/**
 * A full garbage collection now, so that the finalizers of tensors that earlier tests dropped free
 * their memory before a measurement instead of in the middle of it.
 */
export function collectGarbage(): void {
  v8.setFlagsFromString('--expose_gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  gc();
}
