// A process that saves an adapter twice into one directory and is killed (SIGKILL) by
// test/fault-injection.test.ts during the second save:
//
//   node -r ./test/helpers/ts-register.js test/helpers/save-child.ts DIR REF MODE
//
// It saves version 1 into DIR, version 2 (other values; with MODE rename-pause also another
// lora_alpha) into REF as the reference, then saves version 2 into DIR. MODE says where the second
// save stops, so that the kill lands there: write-pause (inside the write of the weights' temporary
// file), rename-pause (after the weights were renamed into place, before the config is), free (no
// stop: the parent kills it as soon as it sees the temporary file). Progress goes to stdout, one
// line per event.
import fs = require('fs');
import { saveAdapter } from '../../lib';
import { stackWithLora } from './stack-model';

const [dir, ref, mode] = process.argv.slice(2);

const say = (line: string) => process.stdout.write(`${line}\n`);

async function main(): Promise<void> {
  await saveAdapter(stackWithLora(16, 1), dir);
  say('saved v1');
  const v2 = stackWithLora(mode === 'rename-pause' ? 32 : 16, 2);
  await saveAdapter(v2, ref);
  say('saved reference v2');
  if (mode === 'write-pause') {
    // The third write of the weights' temporary file never completes.
    const write = fs.write;
    let calls = 0;
    (fs as { write: unknown }).write = (...args: unknown[]) => {
      if (++calls === 3) {
        say('paused in the write of the weights');
        return;
      }
      return (write as (...a: unknown[]) => void)(...args);
    };
  } else if (mode === 'rename-pause') {
    const rename = fs.rename;
    (fs as { rename: unknown }).rename = (from: string, to: string, cb: (e: Error | null) => void) => {
      if (to.endsWith('adapter_config.json')) {
        say('paused between the renames'); // the callback never comes
        return;
      }
      return rename(from, to, cb);
    };
  }
  setInterval(() => undefined, 1000); // stay alive while paused, until killed
  say('saving v2');
  await saveAdapter(v2, dir);
  say('saved v2');
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
