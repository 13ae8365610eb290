// Lets a plain `node` process run the TypeScript sources: `.ts` files are
// compiled on require (typescript's transpileModule, no type check), and
// requests for the compiled package under dist/lib/ are served from lib/.
// Child processes of the tests use it (node -r ./test/helpers/ts-register.js …)
// so that they run the code under test, never a stale dist/ build; so do the
// long-running scripts (scripts/fuzz.js).
//
// Compiling lib/ takes seconds, and the tests start many child processes and
// workers, so the output is cached in the system's temporary directory, keyed
// by the file's path and content and the compiler's version.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const Module = require('module');
const { threadId } = require('worker_threads');

const root = path.resolve(__dirname, '..', '..');
const distLib = path.join(root, 'dist', 'lib') + path.sep;
const lib = path.join(root, 'lib') + path.sep;
const cacheDir = path.join(os.tmpdir(), `lora-cuda-ts-cache-${typeof process.getuid === 'function' ? process.getuid() : 0}`);
let tsVersion = null;

function compile(file, source) {
  if (tsVersion === null) tsVersion = JSON.parse(fs.readFileSync(require.resolve('typescript/package.json'), 'utf8')).version;
  const key = crypto.createHash('sha256').update(`${tsVersion}\0${file}\0`).update(source).digest('hex');
  const cached = path.join(cacheDir, `${key}.js`);
  try {
    return fs.readFileSync(cached, 'utf8');
  } catch {
    // not cached yet
  }
  const ts = require('typescript');
  const out = ts.transpileModule(source, {
    fileName: file,
    compilerOptions: {
      module: ts.ModuleKind.CommonJS,
      target: ts.ScriptTarget.ES2022,
      esModuleInterop: true,
      sourceMap: false,
      inlineSourceMap: true,
    },
  }).outputText;
  try {
    fs.mkdirSync(cacheDir, { recursive: true });
    const tmp = `${cached}.${process.pid}.${threadId}.tmp`;
    fs.writeFileSync(tmp, out);
    fs.renameSync(tmp, cached); // atomic: concurrent writers of one entry write the same text
  } catch {
    // no cache, then
  }
  return out;
}

if (!require.extensions['.ts']) {
  require.extensions['.ts'] = (m, file) => {
    m._compile(compile(file, fs.readFileSync(file, 'utf8')), file);
  };

  const resolve = Module._resolveFilename;
  Module._resolveFilename = function (request, parent, ...rest) {
    if (parent && parent.filename && (request.startsWith('.') || path.isAbsolute(request))) {
      const abs = path.resolve(path.dirname(parent.filename), request);
      if (abs.startsWith(distLib)) {
        const ts = path.join(lib, abs.slice(distLib.length)).replace(/\.js$/, '') + '.ts';
        if (fs.existsSync(ts)) return ts;
      }
    }
    if (request === 'lora-cuda') return path.join(root, 'lib', 'index.ts');
    return resolve.call(this, request, parent, ...rest);
  };
}

module.exports = { root };
