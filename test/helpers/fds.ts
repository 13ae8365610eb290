import * as fs from 'fs';
import * as path from 'path';

/**
 * How many of this process's descriptors are open on files inside `dir` (Linux; -1 elsewhere).
 *
 * Counting every descriptor of the process is not a leak check: the runtime, jest and the sanitizers
 * open and close their own at any moment. Only descriptors on the test's own files say anything.
 */
export function openFilesUnder(dir: string): number {
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc/self/fd');
  } catch {
    return -1; // not Linux: descriptor leaks go unchecked
  }
  const root = fs.realpathSync(dir) + path.sep;
  let n = 0;
  for (const fd of entries) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed since the listing
    }
    if (target.startsWith(root)) n++;
  }
  return n;
}
