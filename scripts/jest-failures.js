#!/usr/bin/env node
// Lists the failed tests recorded in jest's JSON results (`jest --json --outputFile=F`), one block
// per failure with the start of its message, for the end of a log where several jest runs went on
// after one failed. Usage: node scripts/jest-failures.js results.json [more.json ...]
'use strict';
const fs = require('fs');
const path = require('path');

const MESSAGE_LINES = 30;
let failures = 0;
for (const file of process.argv.slice(2)) {
  let r;
  try {
    r = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    // A run that crashed before writing its results is itself worth naming.
    console.log(`${path.basename(file)}: no results (${e.message.split('\n')[0]})`);
    failures++;
    continue;
  }
  for (const suite of r.testResults || []) {
    const name = path.relative(process.cwd(), suite.name);
    const failed = (suite.assertionResults || []).filter((t) => t.status === 'failed');
    if (suite.status === 'failed' && failed.length === 0) {
      // The suite itself failed to run (a syntax error, a crash of its worker, a hook that threw).
      failures++;
      console.log(`\n${path.basename(file)}: ${name}: the suite failed to run`);
      console.log(indent((suite.message || '').split('\n').slice(0, MESSAGE_LINES).join('\n')));
    }
    for (const t of failed) {
      failures++;
      console.log(`\n${path.basename(file)}: ${name}: ${t.fullName}`);
      console.log(indent((t.failureMessages || []).join('\n').split('\n').slice(0, MESSAGE_LINES).join('\n')));
    }
  }
}
console.log(`\n${failures} failed test${failures === 1 ? '' : 's'} in ${process.argv.length - 2} jest run${process.argv.length === 3 ? '' : 's'}`);

function indent(s) {
  return s.replace(/^/gm, '    ');
}
