// Prints vitest's JSON report as the one plain line CI reads: "N passed, N failed[, N skipped]".
// A missing or unreadable report counts as a failure.
import { readFileSync } from 'node:fs';

let report;
try {
  report = JSON.parse(readFileSync(process.argv[2] ?? '.vitest-results.json', 'utf8'));
} catch (err) {
  console.log(`test report unreadable: ${err.message}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}
let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of report.testResults ?? []) {
  // A file that failed outside its tests (failed to load, or a beforeAll/afterAll hook threw, so
  // its tests were skipped) has no failed assertion but is still a failure.
  const asserts = file.assertionResults ?? [];
  if (file.status === 'failed' && !asserts.some((t) => t.status === 'failed')) failed++;
  for (const t of file.assertionResults ?? []) {
    if (t.status === 'passed') passed++;
    else if (t.status === 'failed') failed++;
    else skipped++;
  }
}
console.log(
  skipped > 0
    ? `${passed} passed, ${failed} failed, ${skipped} skipped`
    : `${passed} passed, ${failed} failed`,
);
process.exit(failed > 0 ? 1 : 0);
