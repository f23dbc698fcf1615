/**
 * An interval index over key strings: a map from half-open intervals [start, hi) to values that
 * answers "which intervals contain key k" (a stabbing query), as etcd's watcher groups keep their
 * range watchers in an interval tree (mvcc/watcher_group.go, pkg/adt).
 *
 * The structure is an AVL tree ordered by (start, hi), each node augmented with the largest `hi`
 * in its subtree (`maxHi`). Invariants (checked by `checkInvariants`, which the tests call after
 * every step of random sequences):
 * - in-order traversal is strictly increasing in (start, hi): one node per distinct interval;
 * - every node's `height` is 1 + the larger of its children's heights, and the two heights differ
 *   by at most one (so the height is at most ~1.44·log2(n + 2));
 * - every node's `maxHi` is the largest `hi` of itself and its subtree.
 *
 * Costs: `get`, `set` and `delete` O(log n). `stab(k)` visits only subtrees whose `maxHi` is above
 * k and, right of the search path, only nodes whose start is at or below k: every node it visits is
 * on the search path for k or has a match in its subtree, so it costs O(log n) plus at most
 * O(log n) per match in the worst case, and O(log n + m) when the matches are clustered (the
 * intervals sharing one start, or nested prefixes). Nothing is allocated by a query.
 *
 * Keys are latin1 strings (one char per byte, so every char is below U+0100). An unbounded
 * interval ("every key from start", etcd's range end "\0") is given `hi` = `unboundedHi`, which
 * sorts above every key.
 */

/** A `hi` above every latin1 key string: the end of an interval that runs to the end of the key space. */
export const unboundedHi = '\uffff';

interface Node<V> {
  readonly start: string;
  readonly hi: string;
  value: V;
  left: Node<V> | undefined;
  right: Node<V> | undefined;
  height: number;
  maxHi: string;
}

const height = <V>(n: Node<V> | undefined): number => (n ? n.height : 0);

function update<V>(n: Node<V>): void {
  const l = n.left;
  const r = n.right;
  n.height = 1 + Math.max(l ? l.height : 0, r ? r.height : 0);
  let m = n.hi;
  if (l && l.maxHi > m) m = l.maxHi;
  if (r && r.maxHi > m) m = r.maxHi;
  n.maxHi = m;
}

function rotateRight<V>(n: Node<V>): Node<V> {
  const l = n.left!;
  n.left = l.right;
  l.right = n;
  update(n);
  update(l);
  return l;
}

function rotateLeft<V>(n: Node<V>): Node<V> {
  const r = n.right!;
  n.right = r.left;
  r.left = n;
  update(n);
  update(r);
  return r;
}

/** Restores the AVL balance at `n` (its children are balanced, heights differ by at most 2). */
function balance<V>(n: Node<V>): Node<V> {
  update(n);
  const bf = height(n.left) - height(n.right);
  if (bf > 1) {
    const l = n.left!;
    if (height(l.left) < height(l.right)) n.left = rotateLeft(l);
    return rotateRight(n);
  }
  if (bf < -1) {
    const r = n.right!;
    if (height(r.right) < height(r.left)) n.right = rotateRight(r);
    return rotateLeft(n);
  }
  return n;
}

const compare = (aStart: string, aHi: string, bStart: string, bHi: string): number =>
  aStart < bStart ? -1 : aStart > bStart ? 1 : aHi < bHi ? -1 : aHi > bHi ? 1 : 0;

function removeMin<V>(n: Node<V>): Node<V> | undefined {
  if (!n.left) return n.right;
  n.left = removeMin(n.left);
  return balance(n);
}

export class IntervalIndex<V> {
  #root: Node<V> | undefined;
  #size = 0;
  /** Nodes visited by `stab` so far (for the tests of its cost). */
  visited = 0;

  /** Distinct intervals held. */
  get size(): number {
    return this.#size;
  }

  get(start: string, hi: string): V | undefined {
    let n = this.#root;
    while (n) {
      const c = compare(start, hi, n.start, n.hi);
      if (c === 0) return n.value;
      n = c < 0 ? n.left : n.right;
    }
    return undefined;
  }

  /** Sets the value of [start, hi), adding the interval if it is not held. */
  set(start: string, hi: string, value: V): void {
    this.#root = this.#insert(this.#root, start, hi, value);
  }

  #insert(n: Node<V> | undefined, start: string, hi: string, value: V): Node<V> {
    if (!n) {
      this.#size++;
      return { start, hi, value, left: undefined, right: undefined, height: 1, maxHi: hi };
    }
    const c = compare(start, hi, n.start, n.hi);
    if (c === 0) {
      n.value = value;
      return n;
    }
    if (c < 0) n.left = this.#insert(n.left, start, hi, value);
    else n.right = this.#insert(n.right, start, hi, value);
    return balance(n);
  }

  /** Removes [start, hi); returns whether it was held. */
  delete(start: string, hi: string): boolean {
    const before = this.#size;
    this.#root = this.#remove(this.#root, start, hi);
    return this.#size < before;
  }

  #remove(n: Node<V> | undefined, start: string, hi: string): Node<V> | undefined {
    if (!n) return undefined;
    const c = compare(start, hi, n.start, n.hi);
    if (c < 0) n.left = this.#remove(n.left, start, hi);
    else if (c > 0) n.right = this.#remove(n.right, start, hi);
    else {
      this.#size--;
      if (!n.left) return n.right;
      if (!n.right) return n.left;
      // Two children: the smallest node of the right subtree takes n's place.
      let m = n.right;
      while (m.left) m = m.left;
      m.right = removeMin(n.right);
      m.left = n.left;
      return balance(m);
    }
    return balance(n);
  }

  /**
   * Calls `visit` with the value of every interval that contains `key` (start <= key < hi), in no
   * particular order. `visit` must not change the index (collect first, then change).
   */
  stab(key: string, visit: (value: V) => void): void {
    this.#stab(this.#root, key, visit);
  }

  #stab(n: Node<V> | undefined, key: string, visit: (value: V) => void): void {
    while (n && n.maxHi > key) {
      this.visited++;
      if (n.left && n.left.maxHi > key) this.#stab(n.left, key, visit);
      // This node and its right subtree start after `key`: none of them contains it.
      if (n.start > key) return;
      if (n.hi > key) visit(n.value);
      n = n.right;
    }
  }

  /** Calls `fn` for every interval in (start, hi) order. `fn` must not change the index. */
  forEach(fn: (value: V, start: string, hi: string) => void): void {
    const stack: Array<Node<V>> = [];
    let n = this.#root;
    while (n || stack.length > 0) {
      while (n) {
        stack.push(n);
        n = n.left;
      }
      const top = stack.pop()!;
      fn(top.value, top.start, top.hi);
      n = top.right;
    }
  }

  /**
   * Every value in (start, hi) order, lazily (O(log n) state): the index must not change while
   * the iteration runs.
   */
  *values(): Generator<V> {
    const stack: Array<Node<V>> = [];
    let n = this.#root;
    while (n || stack.length > 0) {
      while (n) {
        stack.push(n);
        n = n.left;
      }
      const top = stack.pop()!;
      yield top.value;
      n = top.right;
    }
  }

  /** Throws if an invariant (see the file comment) does not hold; for tests. O(n). */
  checkInvariants(): void {
    let count = 0;
    let prev: { start: string; hi: string } | undefined;
    const walk = (n: Node<V> | undefined): void => {
      if (!n) return;
      walk(n.left);
      if (prev && compare(prev.start, prev.hi, n.start, n.hi) >= 0)
        throw new Error(`interval index: order broken at [${n.start}, ${n.hi})`);
      prev = n;
      count++;
      walk(n.right);
      const hl = height(n.left);
      const hr = height(n.right);
      if (n.height !== 1 + Math.max(hl, hr)) throw new Error('interval index: a stale height');
      if (Math.abs(hl - hr) > 1) throw new Error('interval index: unbalanced node');
      let m = n.hi;
      if (n.left && n.left.maxHi > m) m = n.left.maxHi;
      if (n.right && n.right.maxHi > m) m = n.right.maxHi;
      if (n.maxHi !== m) throw new Error('interval index: a stale maxHi');
    };
    walk(this.#root);
    if (count !== this.#size) throw new Error(`interval index: size ${this.#size}, ${count} nodes`);
  }

  /** Height of the tree (0 when empty); for tests of the balance bound. */
  get height(): number {
    return height(this.#root);
  }
}
