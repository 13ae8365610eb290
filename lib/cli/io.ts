// What a command talks to, so tests can run commands in-process and read
// everything they print; and the checks of paths that every command makes.
import * as fs from 'fs';
import * as path from 'path';
import { realPathOf } from '../fsio';

export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Progress bars and terminal charts only when true. */
  isTTY: boolean;
  /** Terminal width for bars and charts. */
  columns: number;
}

export const processIO: CliIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: !!process.stdout.isTTY,
  columns: process.stdout.columns || 80,
};

/** A failure the user can fix: printed as one line ("lora-cuda <cmd>: …"), exit code 1. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

/** Wrong or missing arguments: exit code 2, with a pointer to --help. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, 2);
  }
}

/** A library error's message on one line. */
export function oneLine(msg: string): string {
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}

/** A special token as tokenizer_config.json writes it ("</s>" or { "content": "</s>" }), as text. */
export function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/**
 * What is at `p` (following symbolic links), or null when nothing is (ENOENT, ENOTDIR). A symbolic link
 * loop is a CliError that says so (it is not "not found"); other errors (EACCES, …) are thrown as they are.
 */
export function statPath(flag: string, p: string): fs.Stats | null {
  try {
    return fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    if (code === 'ELOOP') throw new CliError(`${flag} ${p}: is a symbolic link loop (ELOOP: following its links never reaches a file or directory); fix or remove the link`);
    throw e;
  }
}

/**
 * Whether two paths are the same file or directory: by device and inode where both exist (so a
 * symbolic link, a hard link or another spelling of a path is seen through), else by their real paths
 * (the longest existing part resolved, the rest appended).
 */
export function samePath(a: string, b: string): boolean {
  const stat = (p: string) => {
    try {
      return fs.statSync(p, { bigint: true });
    } catch {
      return undefined;
    }
  };
  const sa = stat(a);
  const sb = stat(b);
  if (sa && sb) return sa.dev === sb.dev && sa.ino === sb.ino;
  if (sa || sb) return false;
  return realPathOf(a) === realPathOf(b);
}

/** Whether `p` is `dir` or lies inside it (by real paths). */
export function isWithin(p: string, dir: string): boolean {
  if (samePath(p, dir)) return true;
  const rel = path.relative(realPathOf(dir), realPathOf(p));
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}
