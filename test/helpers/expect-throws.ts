type Ctor = new (...args: never[]) => Error;

/** fn throws an instance of `type` (exactly that class for TypeError/RangeError) whose message matches `re`. */
export function expectThrows(fn: () => unknown, type: Ctor, re: RegExp): Error {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  if (caught === undefined) throw new Error(`expected a ${type.name} matching ${re}, but nothing was thrown`);
  const err = caught as Error;
  if (!(err instanceof type)) {
    const got = err as { constructor?: { name?: string }; message?: string };
    throw new Error(`expected a ${type.name} matching ${re}, got ${got?.constructor?.name}: ${got?.message}`);
  }
  if (type === TypeError || type === RangeError) expect(err.constructor).toBe(type);
  expect(err.message).toMatch(re);
  return err;
}
