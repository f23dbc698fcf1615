/**
 * A latency histogram in the spirit of HdrHistogram: log-linear buckets over microseconds, so
 * memory is fixed (a bounded number of buckets, however many samples) and every percentile is
 * within ~1.6% of the true sample value.
 *
 * Layout: values below `linearMaxUs` (128 µs) get one bucket per microsecond (exact); above it,
 * each power of two is split into `subBuckets` (64) equal buckets. A value is clamped to
 * `valueMaxUs` (2^36 µs, about 19 hours) so the bucket count stays bounded.
 */
const linearMaxUs = 128;
const subBuckets = 64;
const linearBits = 7; // log2(linearMaxUs)
const valueMaxBits = 36;
const valueMaxUs = 2 ** valueMaxBits;
const bucketCount = linearMaxUs + (valueMaxBits - linearBits) * subBuckets;

export interface LatencySummary {
  readonly count: number;
  readonly minMs: number;
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p90Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  readonly maxMs: number;
}

function bucketOf(us: number): number {
  if (us < linearMaxUs) return Math.floor(us);
  const exp = Math.floor(Math.log2(us)); // linearBits <= exp < valueMaxBits
  const sub = Math.floor(us / 2 ** (exp - 6)) - subBuckets; // 0 <= sub < 64
  return linearMaxUs + (exp - linearBits) * subBuckets + Math.min(Math.max(sub, 0), subBuckets - 1);
}

/** The representative value (µs) of a bucket: its midpoint. */
function bucketValue(bucket: number): number {
  if (bucket < linearMaxUs) return bucket + 0.5;
  const rel = bucket - linearMaxUs;
  const exp = linearBits + Math.floor(rel / subBuckets);
  const width = 2 ** (exp - 6);
  return (subBuckets + (rel % subBuckets)) * width + width / 2;
}

export class Histogram {
  readonly #counts = new Float64Array(bucketCount);
  #count = 0;
  #sumUs = 0;
  #minUs = Number.POSITIVE_INFINITY;
  #maxUs = 0;

  /** Records one latency in milliseconds (negative or non-finite values are a caller bug). */
  recordMs(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`histogram: bad latency ${ms} ms`);
    const us = Math.min(ms * 1000, valueMaxUs - 1);
    this.#counts[bucketOf(us)]! += 1;
    this.#count += 1;
    this.#sumUs += us;
    if (us < this.#minUs) this.#minUs = us;
    if (us > this.#maxUs) this.#maxUs = us;
  }

  get count(): number {
    return this.#count;
  }

  /** The value at quantile q (0 < q <= 1) in ms, or NaN with no samples. Never above the max seen. */
  quantileMs(q: number): number {
    if (!(q > 0 && q <= 1)) throw new RangeError(`histogram: quantile ${q} not in (0, 1]`);
    if (this.#count === 0) return Number.NaN;
    if (q === 1) return this.#maxUs / 1000;
    const rank = Math.ceil(q * this.#count);
    let seen = 0;
    for (let b = 0; b < bucketCount; b++) {
      seen += this.#counts[b]!;
      if (seen >= rank) {
        const us = Math.min(Math.max(bucketValue(b), this.#minUs), this.#maxUs);
        return us / 1000;
      }
    }
    return this.#maxUs / 1000;
  }

  summary(): LatencySummary {
    const empty = this.#count === 0;
    return {
      count: this.#count,
      minMs: empty ? Number.NaN : this.#minUs / 1000,
      meanMs: empty ? Number.NaN : this.#sumUs / this.#count / 1000,
      p50Ms: this.quantileMs(0.5),
      p90Ms: this.quantileMs(0.9),
      p99Ms: this.quantileMs(0.99),
      p999Ms: this.quantileMs(0.999),
      maxMs: empty ? Number.NaN : this.#maxUs / 1000,
    };
  }
}
