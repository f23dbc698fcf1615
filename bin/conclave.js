#!/usr/bin/env node
// The `conclave` command. It runs the built CLI (dist/) in this very process, so the PID of
// `node bin/conclave.js serve …` is the member's PID (signals reach the member itself).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = new URL('../dist/backends/raft/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  process.stderr.write(
    `conclave: the built CLI is missing (${fileURLToPath(cli)}). Build it first: run \`npm run build\` in ${root} ` +
      '(npm ci and npm install run it through the prepare script). From a checkout, ' +
      '`node --import tsx backends/raft/cli.ts serve …` runs the sources without a build.\n',
  );
  process.exit(1);
}
const { main } = await import(cli.href);
process.exit(await main(process.argv.slice(2)));
