/**
 * Certificates for TLS tests, made at run time with the `openssl` command (Node 20 cannot issue
 * X.509) into a temporary directory: a CA (`openssl req -x509`), leaf certificates signed by it
 * with `openssl ca` (so `-startdate/-enddate` can make an expired one), revocation and a CRL.
 * Nothing here is committed; keys are EC P-256 (fast to make). `.ci/run` installs openssl when
 * it is missing.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Issued {
  /** Paths of the PEM certificate and its key. */
  readonly cert: string;
  readonly key: string;
  /** The PEM contents (for client options). */
  readonly certPem: Buffer;
  readonly keyPem: Buffer;
}

export interface IssueOptions {
  /** Subject alternative names (default IP:127.0.0.1, DNS:localhost). */
  sans?: string[];
  /** A validity period in the past (certificate has expired). */
  expired?: boolean;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
}

const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** One certificate authority in its own directory, able to issue, revoke and publish a CRL. */
export class TestCa {
  readonly dir: string;
  readonly name: string;
  /** Paths of the CA certificate and key. */
  readonly cert: string;
  readonly key: string;
  #serial = 0;

  constructor(dir: string, name: string) {
    this.dir = dir;
    this.name = name;
    mkdirSync(join(dir, 'newcerts'), { recursive: true });
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(join(dir, 'serial'), '1000\n');
    writeFileSync(join(dir, 'crlnumber'), '1000\n');
    writeFileSync(
      join(dir, 'ca.cnf'),
      [
        '[ ca ]',
        'default_ca = CA_default',
        '[ CA_default ]',
        `dir = ${dir}`,
        'database = $dir/index.txt',
        'new_certs_dir = $dir/newcerts',
        'certificate = $dir/ca.crt',
        'private_key = $dir/ca.key',
        'serial = $dir/serial',
        'crlnumber = $dir/crlnumber',
        'default_md = sha256',
        'default_days = 30',
        'default_crl_days = 30',
        'policy = policy_any',
        'copy_extensions = copy',
        'unique_subject = no',
        '[ policy_any ]',
        'commonName = supplied',
        'organizationName = optional',
        '',
      ].join('\n'),
    );
    this.cert = join(dir, 'ca.crt');
    this.key = join(dir, 'ca.key');
    openssl(
      [
        'req',
        '-x509',
        ...ec,
        '-keyout',
        this.key,
        '-out',
        this.cert,
        '-days',
        '30',
        '-subj',
        `/CN=${name}`,
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
      ],
      dir,
    );
  }

  get certPem(): Buffer {
    return readFileSync(this.cert);
  }

  /** A leaf certificate for `cn`, usable as server and client certificate. */
  issue(cn: string, o: IssueOptions = {}): Issued {
    const base = join(this.dir, `${cn.replace(/[^A-Za-z0-9_.-]/g, '_')}-${++this.#serial}`);
    const sans = o.sans ?? ['IP:127.0.0.1', 'DNS:localhost'];
    openssl(
      [
        'req',
        '-new',
        ...ec,
        '-keyout',
        `${base}.key`,
        '-out',
        `${base}.csr`,
        '-subj',
        `/CN=${cn}`,
        '-addext',
        `subjectAltName=${sans.join(',')}`,
        '-addext',
        'extendedKeyUsage=serverAuth,clientAuth',
        '-addext',
        'keyUsage=critical,digitalSignature,keyEncipherment',
      ],
      this.dir,
    );
    const validity = o.expired
      ? ['-startdate', '20200101000000Z', '-enddate', '20200102000000Z']
      : ['-days', '30'];
    openssl(
      [
        'ca',
        '-batch',
        '-notext',
        '-config',
        'ca.cnf',
        '-in',
        `${base}.csr`,
        '-out',
        `${base}.crt`,
        ...validity,
      ],
      this.dir,
    );
    return {
      cert: `${base}.crt`,
      key: `${base}.key`,
      certPem: readFileSync(`${base}.crt`),
      keyPem: readFileSync(`${base}.key`),
    };
  }

  /** Marks `cert` revoked in the CA's database (publish with `crl()`). */
  revoke(cert: Issued): void {
    openssl(['ca', '-config', 'ca.cnf', '-revoke', cert.cert], this.dir);
  }

  /** Writes the CA's current CRL (PEM) and returns its path. */
  crl(): string {
    const out = join(this.dir, 'ca.crl');
    openssl(['ca', '-config', 'ca.cnf', '-gencrl', '-out', out], this.dir);
    return out;
  }
}

/** A temporary directory of CAs; `close()` removes it. */
export class TestPki {
  readonly dir: string;
  #n = 0;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'conclave-pki-'));
  }

  ca(name = 'conclave-test-ca'): TestCa {
    return new TestCa(join(this.dir, `ca${++this.#n}`), name);
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Whether the openssl command is available (tests fail loudly without it: CI installs it). */
export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
