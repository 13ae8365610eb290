// Atomic file and directory replacement, used by every file the library and the command line write
// (safetensors files, adapters, merged checkpoints, training checkpoints, JSON reports).
//
// A file is written to a temporary file beside its target (`.NAME.PID.RANDOM.tmp`, same directory so
// the rename cannot cross file systems), fsynced, closed and renamed over the target; then the
// directory is fsynced so the rename itself survives a power cut. Readers see the old file or the
// complete new one. On an error the temporary file is removed and the target is left as it was; a
// process killed while writing can leave the temporary file behind, which nothing reads.
//
// A directory (a training checkpoint: several files that belong together) is filled under a temporary
// name and swapped in with two renames: the old directory aside, the new one into place. A kill between
// the two leaves no target but the complete old directory aside; recoverDir puts it back.
import * as fs from 'fs';
import * as path from 'path';
import { randomBytes } from 'crypto';
import { Io, quietly, runAsync, runSync, writeFully } from './fsio';

/** The temporary file a write of `target` goes through: `.NAME.PID.RANDOM.tmp` in the same directory. */
export function tempPathFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
}

/** Makes a directory's entries (a rename into it) durable. Best effort: not every file system can. */
function* syncDirOps(dir: string): Io<void> {
  let fd = -1;
  try {
    fd = (yield { kind: 'open', path: dir, flags: 'r' }) as number;
    yield { kind: 'fsync', fd };
  } catch {
    // ignored
  }
  if (fd >= 0) yield* quietly({ kind: 'close', fd });
}

/** Renames `from` to `to`, then syncs the directory of `to`. */
function* renameOps(from: string, to: string): Io<void> {
  yield { kind: 'rename', from, to };
  yield* syncDirOps(path.dirname(to));
}

/**
 * Creates a temporary file beside `target`, lets `body` write it (positioned writes on the
 * descriptor), fsyncs and closes it and returns its path, not yet renamed. On any error the
 * temporary file is closed and removed before the error is rethrown.
 */
export function* stageOps(target: string, body: (fd: number) => Io<void>): Io<string> {
  const tmp = tempPathFor(target);
  const fd = (yield { kind: 'open', path: tmp, flags: 'wx' }) as number;
  let open = true;
  try {
    yield* body(fd);
    yield { kind: 'fsync', fd };
    open = false;
    yield { kind: 'close', fd };
  } catch (e) {
    if (open) yield* quietly({ kind: 'close', fd });
    yield* quietly({ kind: 'unlink', path: tmp });
    throw e;
  }
  return tmp;
}

/** Renames a staged file over its target and syncs the directory; a failed rename removes the staged file. */
export function* commitOps(tmp: string, target: string): Io<void> {
  try {
    yield { kind: 'rename', from: tmp, to: target };
  } catch (e) {
    yield* quietly({ kind: 'unlink', path: tmp });
    throw e;
  }
  yield* syncDirOps(path.dirname(target));
}

/** Writes `target` atomically with `body` writing the content (stageOps, then commitOps). */
export function* atomicWriteOps(target: string, body: (fd: number) => Io<void>): Io<void> {
  const tmp = yield* stageOps(target, body);
  yield* commitOps(tmp, target);
}

function bytesOf(where: string, data: string | Uint8Array): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (data instanceof Uint8Array) return data;
  throw new TypeError(`${where}: data must be a string or a Uint8Array, got ${data === null ? 'null' : typeof data}`);
}

function checkFile(where: string, file: unknown): string {
  if (typeof file !== 'string' || file === '') throw new TypeError(`${where}: file must be a non-empty path string, got ${JSON.stringify(file)}`);
  return file;
}

/**
 * Writes `data` (a string is UTF-8) to `file` atomically: through a temporary file beside it, fsynced
 * and renamed over it, then the directory fsynced. On failure `file` is as it was and no temporary
 * file is left. The directory must exist.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const where = 'writeFileAtomic';
  const target = checkFile(where, file);
  const buf = bytesOf(where, data);
  await runAsync(atomicWriteOps(target, (fd) => writeFully(fd, buf, 0)));
}

/** Synchronous writeFileAtomic(). */
export function writeFileAtomicSync(file: string, data: string | Uint8Array): void {
  const where = 'writeFileAtomicSync';
  const target = checkFile(where, file);
  const buf = bytesOf(where, data);
  runSync(atomicWriteOps(target, (fd) => writeFully(fd, buf, 0)));
}

/** A file written and fsynced beside its target, waiting to be renamed into place. */
export interface StagedFile {
  /** The temporary file. */
  readonly path: string;
  readonly target: string;
  /** Renames it over the target (and syncs the directory); on failure it is removed. */
  commit(): Promise<void>;
  /** Removes it, leaving the target as it was. */
  discard(): Promise<void>;
}

/**
 * The first half of writeFileAtomic: the content is written and fsynced beside `file`, and nothing
 * replaces `file` until commit(). For files that must change together with another (an adapter's
 * config and weights): stage one, write the other, then commit.
 */
export async function stageFile(file: string, data: string | Uint8Array): Promise<StagedFile> {
  const where = 'stageFile';
  const target = checkFile(where, file);
  const buf = bytesOf(where, data);
  const tmp = await runAsync(stageOps(target, (fd) => writeFully(fd, buf, 0)));
  let done = false;
  return {
    path: tmp,
    target,
    async commit() {
      if (done) throw new Error(`${where}: ${target} was already committed or discarded`);
      done = true;
      await runAsync(commitOps(tmp, target));
    },
    async discard() {
      if (done) return;
      done = true;
      await fs.promises.rm(tmp, { force: true });
    },
  };
}

/** The names a directory swap of `target` uses beside it. */
function swapNames(target: string): { parent: string; tmpPrefix: string; oldPrefix: string } {
  const base = path.basename(target);
  return { parent: path.dirname(target), tmpPrefix: `.${base}-tmp-`, oldPrefix: `.${base}-old-` };
}

/**
 * Replaces the directory `target` with a new one, as a unit: `fill` writes the new content into a
 * temporary directory beside it (`.NAME-tmp-PID`), which is fsynced and swapped in with two renames
 * (the old directory to `.NAME-old-PID`, the new one into place), after which the old one is removed.
 * Any failure (in `fill`, or a rename refused) removes the temporary directory and leaves `target` as
 * it was: an old directory already moved aside is renamed back. Only when that too fails, or after a
 * kill between the two renames, is there no `target` and the complete old one aside: recoverDir puts
 * it back (call it before reading), and asideDirs names it.
 */
export async function replaceDir(target: string, fill: (dir: string) => Promise<void>): Promise<void> {
  const { parent, tmpPrefix, oldPrefix } = swapNames(target);
  const tmp = path.join(parent, `${tmpPrefix}${process.pid}`);
  const old = path.join(parent, `${oldPrefix}${process.pid}`);
  const removeTmp = () => fs.promises.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  await fs.promises.rm(tmp, { recursive: true, force: true });
  try {
    await fs.promises.mkdir(tmp, { recursive: true });
    await fill(tmp);
    await runAsync(syncDirOps(tmp));
    await fs.promises.rm(old, { recursive: true, force: true });
  } catch (e) {
    await removeTmp();
    throw e;
  }
  let movedAside = false;
  try {
    if (fs.existsSync(target)) {
      await runAsync(renameOps(target, old));
      movedAside = true;
    }
    await runAsync(renameOps(tmp, target));
  } catch (e) {
    if (movedAside) await runAsync(renameOps(old, target)).catch(() => undefined);
    await removeTmp();
    throw e;
  }
  // The new directory is in place; a failure to remove the old one only leaves it for recoverDir.
  await fs.promises.rm(old, { recursive: true, force: true }).catch(() => undefined);
}

/** The complete old directories that an interrupted replaceDir of `target` left beside it (by `isComplete`). */
export function asideDirs(target: string, isComplete: (dir: string) => boolean = (d) => fs.existsSync(d)): string[] {
  const { parent, oldPrefix } = swapNames(target);
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  return names.filter((n) => n.startsWith(oldPrefix)).map((n) => path.join(parent, n)).filter(isComplete);
}

/**
 * Undoes what an interrupted replaceDir left: when `target` is not complete (by default: does not
 * exist) and a complete old directory waits aside, it is put back; leftover temporary and old
 * directories are removed. Returns whether an old directory was put back.
 */
export async function recoverDir(target: string, isComplete: (dir: string) => boolean = (d) => fs.existsSync(d)): Promise<boolean> {
  const { parent, tmpPrefix, oldPrefix } = swapNames(target);
  let names: string[];
  try {
    names = await fs.promises.readdir(parent);
  } catch {
    return false; // no parent directory: nothing was ever written
  }
  const olds = names.filter((n) => n.startsWith(oldPrefix));
  const tmps = names.filter((n) => n.startsWith(tmpPrefix));
  let restored: string | undefined;
  if (!isComplete(target)) {
    restored = olds.find((n) => isComplete(path.join(parent, n)));
    if (restored) {
      await fs.promises.rm(target, { recursive: true, force: true });
      await runAsync(renameOps(path.join(parent, restored), target));
    }
  }
  for (const n of [...olds, ...tmps]) {
    if (n !== restored) await fs.promises.rm(path.join(parent, n), { recursive: true, force: true });
  }
  return restored !== undefined;
}

/**
 * Creates `dir` (and its parents) if needed and checks that a file can be created in it, by creating
 * and removing a temporary file: a path under a regular file, a read-only file system or a directory
 * without write permission fails here, before any long work whose result would go there. Throws the
 * file system's error (with its `code`: ENOTDIR, EACCES, EROFS, …).
 */
export function ensureWritableDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const probe = tempPathFor(path.join(dir, '.write-check'));
  fs.closeSync(fs.openSync(probe, 'wx'));
  fs.rmSync(probe, { force: true });
}
