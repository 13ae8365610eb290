#!/usr/bin/env node
// Long fuzzing runs of the readers of untrusted files: the safetensors reader, the PEFT adapter loader
// and the Llama config parser. The harness is test/helpers/fuzz.ts; npm test runs a fixed budget of it
// (test/fuzz.test.ts), this script as many cases as asked for:
//
//   node scripts/fuzz.js [--cases N] [--seed S] [--target all|safetensors|adapter|config|pretrained]
//                        [--out DIR] [--stall-seconds T]
//
// --cases is per target (default 100000), --seed picks another set of cases (default: the time),
// --out keeps the work and the findings (default: a temporary directory). The cases run in a child
// process that writes each case's input under OUT/work before running it: when the child dies (a
// signal, an abort, running out of memory) or makes no progress for --stall-seconds (default 60),
// the input of the case it was on is kept as a finding and the run goes on after it. Every case
// breaking a rule is kept too (OUT/findings/<target>-seed<S>-case<I>/, with finding.txt). Replay one
// with --seed S --first I --cases 1. The exit status is 1 when there are findings.
//
// Needs the devDependencies (typescript) and a built addon, as npm test does.
'use strict';
const { fork } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const register = path.join(root, 'test', 'helpers', 'ts-register.js');
const TARGETS = ['safetensors', 'adapter', 'config', 'pretrained'];

function parse(argv) {
  const o = { cases: 100000, seed: Date.now() % 2147483647, target: 'all', out: null, stallSeconds: 60, first: 0, child: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    const int = (v, min) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < min) usage(`${a} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
      return n;
    };
    if (a === '--cases') o.cases = int(val(), 1);
    else if (a === '--seed') o.seed = int(val(), 0);
    else if (a === '--first') o.first = int(val(), 0);
    else if (a === '--target') o.target = val();
    else if (a === '--out') o.out = path.resolve(val());
    else if (a === '--stall-seconds') o.stallSeconds = int(val(), 1);
    else if (a === '--child') o.child = true;
    else if (a === '--help' || a === '-h') usage(null);
    else usage(`unknown option ${a}`);
  }
  if (o.target !== 'all' && !TARGETS.includes(o.target)) usage(`--target must be all or one of ${TARGETS.join(', ')}, got ${o.target}`);
  return o;
}

function usage(err) {
  const text = 'usage: node scripts/fuzz.js [--cases N] [--seed S] [--first I] [--target all|' + TARGETS.join('|') +
    '] [--out DIR] [--stall-seconds T]\n';
  if (err) {
    process.stderr.write(`fuzz: ${err}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

// --------------------------------------------------------------------------- child: runs cases

async function child(o) {
  require(register);
  const h = require(path.join(root, 'test', 'helpers', 'fuzz.ts'));
  const seeds = await h.makeSeeds(fs.mkdtempSync(path.join(o.out, 'seeds-')));
  const stats = await h.fuzz({
    seeds, target: o.target, seed: o.seed, first: o.first, count: o.cases,
    work: path.join(o.out, 'work'), findingsDir: path.join(o.out, 'findings'),
    onCase: (index) => process.send({ index }),
  });
  process.send({ done: true, stats: { ...stats, findings: stats.findings.map((f) => ({ index: f.index, dir: f.dir, message: f.message })) } });
}

// --------------------------------------------------------------------------- parent: watches

function runSegment(o, target, first, count) {
  return new Promise((resolve) => {
    const args = [
      '--child', '--target', target, '--seed', String(o.seed), '--first', String(first), '--cases', String(count), '--out', o.out,
    ];
    const c = fork(__filename, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let last = first - 1;
    let lastAt = Date.now();
    let result = null;
    let stalled = false;
    const timer = setInterval(() => {
      if (Date.now() - lastAt > o.stallSeconds * 1000) {
        stalled = true;
        c.kill('SIGKILL');
      }
    }, 1000);
    c.on('message', (m) => {
      if (m.done) result = m.stats;
      else {
        last = m.index;
        lastAt = Date.now();
        if ((m.index + 1) % 5000 === 0) process.stdout.write(`fuzz: ${target}: ${m.index + 1} cases\n`);
      }
    });
    c.on('exit', (code, signal) => {
      clearInterval(timer);
      resolve({ result, last, code, signal, stalled });
    });
  });
}

async function parent(o) {
  const out = o.out ?? fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-fuzz-'));
  fs.mkdirSync(out, { recursive: true });
  o.out = out;
  const targets = o.target === 'all' ? TARGETS : [o.target];
  const all = [];
  process.stdout.write(`fuzz: seed ${o.seed}, ${o.cases} cases per target from case ${o.first}, in ${out}\n`);
  for (const target of targets) {
    let first = o.first;
    const end = o.first + o.cases;
    const totals = { cases: 0, ok: 0, rejected: 0, findings: 0 };
    const t0 = Date.now();
    while (first < end) {
      const r = await runSegment(o, target, first, end - first);
      if (r.result) {
        totals.cases += r.result.cases;
        totals.ok += r.result.ok;
        totals.rejected += r.result.rejected;
        for (const f of r.result.findings) all.push({ target, ...f });
        totals.findings += r.result.findings.length;
        break;
      }
      // The child died or stalled on case r.last: keep its input, go on after it.
      const index = Math.max(r.last, first);
      const why = r.stalled ? `no progress for ${o.stallSeconds} s (a hang)` : `the process died (${r.signal ?? `exit code ${r.code}`})`;
      const kept = path.join(out, 'findings', `${target}-seed${o.seed}-case${index}`);
      fs.rmSync(kept, { recursive: true, force: true });
      if (fs.existsSync(path.join(out, 'work', target))) fs.cpSync(path.join(out, 'work', target), kept, { recursive: true });
      fs.mkdirSync(kept, { recursive: true });
      fs.writeFileSync(path.join(kept, 'finding.txt'), `${why}\n`);
      all.push({ target, index, dir: kept, message: why });
      totals.findings++;
      totals.cases += index - first + 1;
      first = index + 1;
    }
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    process.stdout.write(`fuzz: ${target}: ${totals.cases} cases in ${secs} s: ${totals.ok} accepted, ${totals.rejected} refused, ${totals.findings} findings\n`);
  }
  for (const f of all) process.stdout.write(`finding: ${f.target} case ${f.index} (${f.dir}): ${f.message.split('\n')[0]}\n`);
  process.exitCode = all.length ? 1 : 0;
}

const opts = parse(process.argv.slice(2));
if (opts.child) {
  child(opts).catch((e) => {
    process.stderr.write(`fuzz: ${e && e.stack ? e.stack : e}\n`);
    process.exit(3);
  });
} else {
  parent(opts);
}
