// File-system work written once for both calling styles: an operation is a generator that yields
// requests (Op) and receives their results, driven either by the *Sync fs calls (runSync) or by the
// callback fs calls (runAsync). The safetensors reader and writer and the atomic writes (atomic.ts)
// are built from these, so each has one implementation with a sync and an async face.
//
// Every file of the user's that the library and the command line read (checkpoints, adapters,
// tokenizers, training data, training checkpoints) goes through openForReading (stat first, a
// non-blocking open, so a FIFO or a device in a file's place is refused instead of waited on) and,
// for whole files, readFileOps (the size bounded before anything is allocated); JSON files also
// through parseJson (nesting depth and container count bounded before JSON.parse runs).
import * as fs from 'fs';
import * as path from 'path';

/** Largest single read or write request (fs rejects requests of 2 GiB and more). */
const IO_CHUNK = 1 << 30;

export type Op =
  | { kind: 'open'; path: string; flags: string | number }
  | { kind: 'stat'; path: string }
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
    case 'stat': return fs.statSync(op.path);
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
      case 'stat': return fs.stat(op.path, done);
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

// ================================================================ reading

/**
 * Flags of every read: O_NONBLOCK, so that open() returns at once where a FIFO (or a device) stands in
 * a file's place (a plain open of a FIFO waits for a writer, forever); regular files read as usual.
 */
const READ_FLAGS = fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0);

/** What a non-regular file is, in words. */
function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'of another kind (neither a file nor a directory)';
}

function withCode(err: Error, code: string, file: string, cause?: unknown): Error {
  return Object.assign(err, { code, path: file }, cause === undefined ? {} : { cause });
}

/**
 * An fs error about `file` as a message that says what happened, keeping its `code`: a missing file
 * (ENOENT, or ENOTDIR for a path through a regular file) says "not found", a symbolic link loop says
 * so (ELOOP, which is not "not found"), anything else "cannot read FILE: <the system's message>".
 */
export function fileError(where: string, file: string, e: unknown): Error {
  const err = e as NodeJS.ErrnoException;
  const code = typeof err?.code === 'string' ? err.code : undefined;
  if (code === undefined) return e as Error;
  const problem = code === 'ENOENT' ? 'not found (ENOENT)'
    : code === 'ENOTDIR' ? 'not found (ENOTDIR: a part of the path is not a directory)'
      : code === 'ELOOP' ? 'is a symbolic link loop (ELOOP: following its links never reaches a file); fix or remove the link'
        : null;
  const out = withCode(new Error(problem ? `${where}: ${file} ${problem}` : `${where}: cannot read ${file}: ${err.message}`), code, file, e);
  // The system's refusal, as the command line tells it from a bug.
  if (err.syscall !== undefined) Object.assign(out, { syscall: err.syscall, errno: err.errno });
  return out;
}

/** Whether `file` exists: false only when it does not (ENOENT, ENOTDIR); a symbolic link loop and other errors throw (fileError). */
export function pathExists(where: string, file: string): boolean {
  try {
    fs.statSync(file);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw fileError(where, file, e);
  }
}

/**
 * The real path of `p`, which need not exist: its longest existing ancestor resolved (symbolic links
 * followed), the rest appended. Two spellings of one place give one string.
 */
export function realPathOf(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  let dir = abs;
  for (;;) {
    try {
      return path.join(fs.realpathSync(dir), ...rest.reverse());
    } catch {
      const parent = path.dirname(dir);
      if (parent === dir) return abs;
      rest.push(path.basename(dir));
      dir = parent;
    }
  }
}

/** The error for a path that exists but is not a regular file (code ERR_NOT_REGULAR_FILE unless `notRegular` makes another). */
function notRegularError(where: string, file: string, st: fs.Stats, notRegular?: (problem: string) => Error): Error {
  const problem = `it is not a regular file: it is ${kindOf(st)}`;
  return notRegular ? notRegular(problem) : withCode(new Error(`${where}: ${file}: ${problem}`), 'ERR_NOT_REGULAR_FILE', file);
}

/**
 * Opens a regular file for reading and returns its descriptor and size. The path is checked with
 * stat() first and the descriptor with fstat() after a non-blocking open, so a FIFO, a device or a
 * directory is refused, never waited on. fs errors become fileError()s; `notRegular` makes the error
 * for a path that is not a regular file from the problem ("it is not a regular file: it is a FIFO
 * (named pipe)").
 */
export function* openForReading(where: string, file: string, notRegular?: (problem: string) => Error): Io<{ fd: number; size: number }> {
  let st: fs.Stats;
  try {
    st = (yield { kind: 'stat', path: file }) as fs.Stats;
  } catch (e) {
    throw fileError(where, file, e);
  }
  if (!st.isFile()) throw notRegularError(where, file, st, notRegular);
  let fd: number;
  try {
    fd = (yield { kind: 'open', path: file, flags: READ_FLAGS }) as number;
  } catch (e) {
    throw fileError(where, file, e);
  }
  try {
    // Again on the descriptor: the path may have been replaced between stat() and open().
    const st2 = (yield { kind: 'fstat', fd }) as fs.Stats;
    if (!st2.isFile()) throw notRegularError(where, file, st2, notRegular);
    return { fd, size: st2.size };
  } catch (e) {
    yield* quietly({ kind: 'close', fd });
    throw e;
  }
}

/** "16 MiB", "1.5 KiB", "100 bytes". */
function formatSize(n: number): string {
  const units: [number, string][] = [[2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [u, name] of units) if (n >= u) return `${+(n / u).toFixed(1)} ${name}`;
  return `${n} bytes`;
}

/** How much of a file the project reads, by kind: its limit and what the file is, for the message. */
export interface ReadLimit {
  maxBytes: number;
  /** What such a file is, for the message ("a config file"). */
  what: string;
}

/** The limits of the files the project reads whole. A file over its limit is refused before it is read. */
export const READ_LIMITS = {
  /** config.json, adapter_config.json, trainer_state.json: kilobytes in practice. */
  config: { maxBytes: 16 * 2 ** 20, what: 'a config file' },
  /**
   * tokenizer.json (Llama 3's has 9 MB, Gemma 3's 33 MB), tokenizer_config.json (some list thousands
   * of added tokens), the other tokenizer files and model.safetensors.index.json.
   */
  large: { maxBytes: 64 * 2 ** 20, what: 'a tokenizer file or shard index' },
  /** Training data (.txt, .jsonl), read whole: the most one read returns. */
  data: { maxBytes: 2 ** 31 - 1, what: 'a data file' },
} satisfies Record<string, ReadLimit>;

/**
 * Reads a whole regular file (openForReading), refusing one larger than `limit` before reading it
 * (code ERR_FILE_TOO_LARGE).
 */
export function* readFileOps(where: string, file: string, limit: ReadLimit): Io<Buffer> {
  const { fd, size } = yield* openForReading(where, file);
  try {
    if (size > limit.maxBytes) {
      throw withCode(new Error(`${where}: ${file} has ${size} bytes (${formatSize(size)}), more than the ${formatSize(limit.maxBytes)} this library reads of ${limit.what}; it is refused unread`),
        'ERR_FILE_TOO_LARGE', file);
    }
    const buf = Buffer.allocUnsafe(size);
    yield* readFully(fd, buf, 0, size, 0,
      () => withCode(new Error(`${where}: ${file} became shorter while it was read`), 'ERR_FILE_CHANGED', file));
    return buf;
  } finally {
    yield* quietly({ kind: 'close', fd });
  }
}

/** JSON nesting deeper than this is refused before parsing (real files nest a few levels). */
export const MAX_JSON_DEPTH = 64;
/**
 * Objects and arrays in one JSON text, at most: a tokenizer.json has up to about a million (one per
 * merge); JSON.parse spends some 64 bytes of heap on each, so a file of nothing but `{}` would cost
 * gigabytes of heap within the size limit without this bound.
 */
export const MAX_JSON_CONTAINERS = 4_000_000;

/**
 * One pass over JSON bytes, before any parse: the deepest nesting and the number of objects and
 * arrays, skipping strings. Stops early at `maxDepth + 1` or `maxContainers + 1`; malformed input
 * (an unterminated string) ends the scan and is left to JSON.parse to report.
 */
export function scanJsonShape(bytes: Uint8Array, maxDepth = MAX_JSON_DEPTH, maxContainers = MAX_JSON_CONTAINERS): { depth: number; containers: number } {
  let depth = 0;
  let deepest = 0;
  let containers = 0;
  const n = bytes.length;
  for (let i = 0; i < n; i++) {
    const c = bytes[i];
    if (c === 0x22 /* " */) {
      for (i++; i < n && bytes[i] !== 0x22; i++) if (bytes[i] === 0x5c /* \ */) i++;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > deepest) deepest = depth;
      if (++containers > maxContainers || deepest > maxDepth) break;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    }
  }
  return { depth: deepest, containers };
}

/**
 * Parses JSON bytes (UTF-8) from `file` after scanJsonShape: nesting deeper than MAX_JSON_DEPTH or
 * more than MAX_JSON_CONTAINERS objects and arrays are refused before JSON.parse, which would
 * spend the heap on them (code ERR_INVALID_JSON, as for text that is not JSON).
 */
export function parseJson(where: string, file: string, bytes: Uint8Array): unknown {
  const { depth, containers } = scanJsonShape(bytes);
  const bad = (problem: string) => withCode(new Error(`${where}: ${file} is not valid JSON: ${problem}`), 'ERR_INVALID_JSON', file);
  if (depth > MAX_JSON_DEPTH) throw bad(`it nests deeper than ${MAX_JSON_DEPTH} levels`);
  if (containers > MAX_JSON_CONTAINERS) throw bad(`it has more than ${MAX_JSON_CONTAINERS} objects and arrays`);
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw bad((e as Error).message);
  }
}

/** Reads and parses a JSON file: readFileOps with `limit`, then parseJson. */
export function* readJsonOps(where: string, file: string, limit: ReadLimit): Io<unknown> {
  return parseJson(where, file, yield* readFileOps(where, file, limit));
}

/** readJsonOps, asynchronously. */
export function readJsonFile(where: string, file: string, limit: ReadLimit): Promise<unknown> {
  return runAsync(readJsonOps(where, file, limit));
}

/** readJsonOps, synchronously. */
export function readJsonFileSync(where: string, file: string, limit: ReadLimit): unknown {
  return runSync(readJsonOps(where, file, limit));
}

/** A whole file (readFileOps), asynchronously. */
export function readWholeFile(where: string, file: string, limit: ReadLimit): Promise<Buffer> {
  return runAsync(readFileOps(where, file, limit));
}

/** A whole file (readFileOps), synchronously. */
export function readWholeFileSync(where: string, file: string, limit: ReadLimit): Buffer {
  return runSync(readFileOps(where, file, limit));
}
