import * as fs from 'fs';
import * as path from 'path';

/**
 * How many of this process's descriptors are open on `target` (Linux; -1 elsewhere): for a file, on
 * the file itself or on the temporary files the writers make beside it (`.<name>.<pid>.<hex>.tmp`);
 * for a directory, on anything inside it.
 *
 * Counting every descriptor of the process is no leak check: the runtime, jest and the sanitizers
 * open and close their own at any moment, and files a test left unclosed are closed whenever the
 * garbage collector finalizes them. Only descriptors on the files a check is about say anything.
 */
export function openFilesOf(target: string): number {
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc/self/fd');
  } catch {
    return -1; // not Linux: descriptor leaks go unchecked
  }
  const real = fs.realpathSync(target);
  const isDir = fs.statSync(real).isDirectory();
  const tempPrefix = path.join(path.dirname(real), `.${path.basename(real)}.`);
  const matches = (p: string) =>
    isDir ? p.startsWith(real + path.sep) : p === real || (p.startsWith(tempPrefix) && p.endsWith('.tmp'));
  let n = 0;
  for (const fd of entries) {
    let p: string;
    try {
      p = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed since the listing
    }
    if (matches(p.replace(/ \(deleted\)$/, ''))) n++;
  }
  return n;
}
