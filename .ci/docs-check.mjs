// The API reference (TypeDoc, typedoc.json): builds it without writing files and reports
// - broken links ({@link} to nothing) and TypeDoc errors: always a failure;
// - public types referenced but not exported, and public declarations without documentation:
//   a failure (CI runs it so: every export is documented). --lenient only counts them, for a
//   local look while writing comments.
// A checkout without a usable git remote gets TypeDoc's "source links will be broken" warning:
// that is about the checkout, not the docs, so it is shown but not counted.
// Usage: npm run docs:check [-- --lenient]   (npm run docs writes HTML)
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const strict = !args.includes('--lenient');
const r = spawnSync(
  process.execPath,
  ['node_modules/typedoc/bin/typedoc', '--emit', 'none', '--logLevel', 'Warn'],
  { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' }, maxBuffer: 64 * 1024 * 1024 },
);
// biome-ignore lint/suspicious/noControlCharactersInRegex: strips terminal colour codes
const lines = `${r.stdout}\n${r.stderr}`.split('\n').map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''));
const noRemote = (l) => /git remote .* was not valid/.test(l);
for (const l of lines.filter(noRemote)) console.log(`${l} (not counted: this checkout has no usable remote)`);
const problems = lines.filter(
  (l) => /\[(warning|error)\]/.test(l) && !/Found \d+ errors/.test(l) && !noRemote(l),
);
const undocumented = problems.filter((l) => l.includes('does not have any documentation'));
const notExported = problems.filter((l) => l.includes('but not included in the documentation'));
const broken = problems.filter((l) => !undocumented.includes(l) && !notExported.includes(l));
for (const l of [...broken, ...notExported, ...undocumented]) console.log(l);
console.log(
  `api docs: ${broken.length} broken links or errors, ${notExported.length} referenced but not exported, ${undocumented.length} undocumented public declarations`,
);
const failed =
  r.status !== 0 || broken.length > 0 || (strict && (notExported.length > 0 || undocumented.length > 0));
process.exit(failed ? 1 : 0);
