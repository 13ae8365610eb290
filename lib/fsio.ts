// File-system work written once for both calling styles: an operation is a generator that yields
// requests (Op) and receives their results, driven either by the *Sync fs calls (runSync) or by the
// callback fs calls (runAsync). The safetensors reader and writer and the atomic writes (atomic.ts)
// are built from these, so each has one implementation with a sync and an async face.
import * as fs from 'fs';

/** Largest single read or write request (fs rejects requests of 2 GiB and more). */
const IO_CHUNK = 1 << 30;

export type Op =
  | { kind: 'open'; path: string; flags: string }
  | { kind: 'fstat'; fd: number }
  | { kind: 'read'; fd: number; buf: Uint8Array; off: number; len: number; pos: number }
  | { kind: 'write'; fd: number; buf: Uint8Array; off: number; len: number; pos: number }
  | { kind: 'fsync'; fd: number }
  | { kind: 'close'; fd: number }
  | { kind: 'rename'; from: string; to: string }
  | { kind: 'unlink'; path: string };

/** A computation that yields file-system requests and receives their results. */
export type Io<T> = Generator<Op, T, unknown>;

function doSync(op: Op): unknown {
  switch (op.kind) {
    case 'open': return fs.openSync(op.path, op.flags);
    case 'fstat': return fs.fstatSync(op.fd);
    case 'read': return fs.readSync(op.fd, op.buf, op.off, op.len, op.pos);
    case 'write': return fs.writeSync(op.fd, op.buf, op.off, op.len, op.pos);
    case 'fsync': return fs.fsyncSync(op.fd);
    case 'close': return fs.closeSync(op.fd);
    case 'rename': return fs.renameSync(op.from, op.to);
    case 'unlink': return fs.unlinkSync(op.path);
  }
}

function doAsync(op: Op): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, value?: unknown) => (err ? reject(err) : resolve(value));
    switch (op.kind) {
      case 'open': return fs.open(op.path, op.flags, done);
      case 'fstat': return fs.fstat(op.fd, done);
      case 'read': return fs.read(op.fd, op.buf, op.off, op.len, op.pos, done);
      case 'write': return fs.write(op.fd, op.buf, op.off, op.len, op.pos, done);
      case 'fsync': return fs.fsync(op.fd, done);
      case 'close': return fs.close(op.fd, done);
      case 'rename': return fs.rename(op.from, op.to, done);
      case 'unlink': return fs.unlink(op.path, done);
    }
  });
}

export function runSync<T>(g: Io<T>): T {
  let step = g.next();
  while (!step.done) {
    let value: unknown;
    let failed = false;
    try {
      value = doSync(step.value);
    } catch (e) {
      failed = true;
      value = e;
    }
    step = failed ? g.throw(value) : g.next(value);
  }
  return step.value;
}

export async function runAsync<T>(g: Io<T>): Promise<T> {
  let step = g.next();
  while (!step.done) {
    let value: unknown;
    let failed = false;
    try {
      value = await doAsync(step.value);
    } catch (e) {
      failed = true;
      value = e;
    }
    step = failed ? g.throw(value) : g.next(value);
  }
  return step.value;
}

/** Runs a cleanup op, ignoring its failure (the error being handled matters more). */
export function* quietly(op: Op): Io<void> {
  try {
    yield op;
  } catch {
    // ignored
  }
}

/** Fills buf[off, off + len) from the file at pos; a short file is an error, not a partial result. */
export function* readFully(fd: number, buf: Uint8Array, off: number, len: number, pos: number, onShort: () => Error): Io<void> {
  let done = 0;
  while (done < len) {
    const n = (yield { kind: 'read', fd, buf, off: off + done, len: Math.min(len - done, IO_CHUNK), pos: pos + done }) as number;
    if (n === 0) throw onShort();
    done += n;
  }
}

export function* writeFully(fd: number, buf: Uint8Array, pos: number): Io<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const len = Math.min(buf.byteLength - done, IO_CHUNK);
    const n = (yield { kind: 'write', fd, buf, off: done, len, pos: pos + done }) as number;
    if (n <= 0) throw new Error(`write returned ${n} bytes`);
    done += n;
  }
}
