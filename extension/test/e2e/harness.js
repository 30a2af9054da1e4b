// End-to-end harness: a private redis-server, the real seatkeeper runner, and Debian's Chromium driven
// over the DevTools protocol on a pipe (--remote-debugging-pipe), with no dependency. Only loopback;
// every wait is bounded in time.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../../..');
export const REFERENCE = path.join(REPO, 'extension/reference');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
export const SEATKEEPER_BIN = path.resolve(REPO, process.env.SEATKEEPER_BIN ?? 'target/debug/seatkeeper');
const VERBOSE = !!process.env.SEATKEEPER_E2E_VERBOSE;

// Whatever this process started is killed when it exits, even on a crash or a test-runner timeout.
const started = new Set(); // pids; negative for a process group
process.on('exit', () => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});
function track(child, group = false) {
  const pid = group ? -child.pid : child.pid;
  started.add(pid);
  child.once('exit', () => started.delete(pid));
  return child;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function log(...args) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 23)}]`, ...args);
}

/** Polls fn until it returns a truthy value; fails after timeoutMs with the last value seen. */
export async function waitFor(what, fn, { timeoutMs = 15000, intervalMs = 200 } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (let i = 0; i < 10000; i++) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) break;
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function tempDir(name) {
  return mkdtemp(path.join(os.tmpdir(), `sk-ext-${name}-`));
}

function exited(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

async function stopChild(child, signal = 'SIGTERM', graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const done = await Promise.race([exited(child).then(() => true), sleep(graceMs).then(() => false)]);
  if (!done) {
    child.kill('SIGKILL');
    await exited(child);
  }
}

/** A private redis-server on a free loopback port, nothing saved. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: VERBOSE ? 'inherit' : 'ignore',
  });
  track(child);
  await waitFor(`redis on ${port}`, () => ping(port), { timeoutMs: 10000, intervalMs: 100 });
  return { port, url: `redis://127.0.0.1:${port}`, stop: () => stopChild(child) };
}

function ping(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.setTimeout(1000, () => {
      sock.destroy();
      resolve(false);
    });
    sock.on('error', () => resolve(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      sock.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
  });
}

export const ADMIN_TOKEN = 'e2e-admin-token';

/** The real runner (SEATKEEPER_BIN) on a fixed port, so that it can be stopped and started again. */
export class Server {
  constructor({ redisUrl, dir, port }) {
    Object.assign(this, { redisUrl, dir, port, child: null });
    this.url = `http://127.0.0.1:${port}`;
  }

  static async start(redisUrl) {
    const dir = await tempDir('ledger');
    const s = new Server({ redisUrl, dir, port: await freePort() });
    await s.start();
    return s;
  }

  async start() {
    this.child = spawn(SEATKEEPER_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`], {
      env: {
        ...process.env,
        SEATKEEPER_REDIS_URL: this.redisUrl,
        SEATKEEPER_LEDGER_URL: `sqlite://${this.dir}/ledger.db`,
        SEATKEEPER_ADMIN_TOKEN: ADMIN_TOKEN,
        SEATKEEPER_SWEEP_INTERVAL_SECONDS: '5',
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
      },
      stdio: ['ignore', VERBOSE ? 'inherit' : 'ignore', 'inherit'],
    });
    track(this.child);
    await waitFor(`seatkeeper on ${this.port}`, async () => (await fetch(`${this.url}/health`)).ok, { timeoutMs: 20000, intervalMs: 100 });
  }

  async stop() {
    await stopChild(this.child);
    this.child = null;
  }

  async destroy() {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }

  async api(method, route, { body, token = ADMIN_TOKEN } = {}) {
    const res = await fetch(this.url + route, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
    return { status: res.status, data, headers: res.headers };
  }

  /** Creates a license with one feature `f`; returns its generated key. */
  async license(id, policy) {
    const r = await this.api('PUT', `/api/licenses/${id}`, { body: { features: { f: policy } } });
    if (r.status !== 201) throw new Error(`license ${id}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data.key;
  }

  async active(licenseId) {
    const r = await this.api('GET', `/api/licenses/${licenseId}/session-stats`);
    if (r.status !== 200) throw new Error(`stats ${licenseId}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data.features.f.active;
  }

  async stats(licenseId) {
    return (await this.api('GET', `/api/licenses/${licenseId}/session-stats`)).data.features.f;
  }

  /** The sessions of a user for feature f, from the debug route (both stores side by side). */
  async sessions(userId) {
    const r = await this.api('GET', `/api/licenses/sessions/debug?userId=${encodeURIComponent(userId)}&feature=f`);
    if (r.status === 404) return [];
    if (r.status !== 200) throw new Error(`debug ${userId}: ${r.status} ${JSON.stringify(r.data)}`);
    return r.data.sessions;
  }
}

/** The extension id Chromium gives an unpacked extension: its path's SHA-256, in letters a-p. */
export function extensionId(dir) {
  return createHash('sha256')
    .update(path.resolve(dir))
    .digest('hex')
    .slice(0, 32)
    .replace(/./g, (c) => String.fromCharCode(97 + Number.parseInt(c, 16)));
}

/** A copy of the reference extension with a config.json for this test, and nothing else changed. */
export async function referenceCopy(config) {
  const dir = await tempDir('extension');
  await cp(REFERENCE, dir, { recursive: true });
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}

/** Headless Chromium with the extension loaded, driven over the DevTools protocol on a pipe. */
export class Browser {
  /** `extDir`: an unpacked extension to load; without one, a plain browser (the console's tests). */
  constructor({ extDir, profileDir }) {
    Object.assign(this, { extDir, profileDir });
    this.extId = extDir ? extensionId(extDir) : null;
    this.nextId = 0;
    this.pending = new Map();
    this.child = null;
  }

  static async launch(opts) {
    const b = new Browser(opts);
    await b.launch();
    return b;
  }

  async launch() {
    const args = [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--user-data-dir=${this.profileDir}`,
      ...(this.extDir ? [`--load-extension=${this.extDir}`, `--disable-extensions-except=${this.extDir}`] : []),
      '--window-size=1280,900',
      '--remote-debugging-pipe',
      '--enable-logging=stderr',
      'about:blank',
    ];
    // Its own process group, so that a kill takes every Chromium process at once.
    const child = spawn(CHROMIUM, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'], detached: true });
    this.child = track(child, true);
    this.exit = exited(child);
    let errBuf = '';
    child.stderr.on('data', (d) => {
      errBuf += d.toString();
      const lines = errBuf.split('\n');
      errBuf = lines.pop();
      for (const l of lines) if (VERBOSE || /CONSOLE/.test(l)) log('chromium:', l.slice(0, 400));
    });
    let buf = '';
    child.stdio[4].on('data', (d) => {
      buf += d.toString();
      for (let i = buf.indexOf('\0'); i >= 0; i = buf.indexOf('\0')) {
        const msg = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        const p = msg.id != null && this.pending.get(msg.id);
        if (p) {
          this.pending.delete(msg.id);
          if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
          else p.resolve(msg.result);
        }
      }
    });
    child.stdio[3].on('error', () => {});
    this.exit.then(() => {
      for (const p of this.pending.values()) p.reject(new Error(`${p.method}: browser exited`));
      this.pending.clear();
    });
    await waitFor('the browser to answer', () => this.send('Browser.getVersion'), { timeoutMs: 20000, intervalMs: 200 });
  }

  send(method, params = {}, sessionId = undefined, timeoutMs = 10000) {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) {
      return Promise.reject(new Error(`${method}: browser not running`));
    }
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        method,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.stdio[3].write(`${JSON.stringify({ id, method, params, sessionId })}\0`);
    });
  }

  async targets() {
    return (await this.send('Target.getTargets')).targetInfos;
  }

  /** The extension's service worker target, if it is running. */
  async worker() {
    return (await this.targets()).find((t) => t.type === 'service_worker' && t.url.startsWith(`chrome-extension://${this.extId}/`));
  }

  /** Evaluates an expression in the extension's running service worker; undefined when none runs. */
  async workerEval(expression) {
    const w = await this.worker();
    if (!w) return undefined;
    const { sessionId } = await this.send('Target.attachToTarget', { targetId: w.targetId, flatten: true });
    try {
      const r = await this.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, sessionId);
      if (r.exceptionDetails) throw new Error(`worker eval: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
      return r.result.value;
    } finally {
      await this.send('Target.detachFromTarget', { sessionId }).catch(() => {});
    }
  }

  /** The session the extension has written to storage.local, the copy a restart gives back. */
  async keptSession() {
    return (await this.workerEval(`chrome.storage.local.get('seatkeeper.session').then((x) => x['seatkeeper.session'] ?? null)`)) ?? null;
  }

  /** Stops the extension's service worker, as Chromium does after 30 s without events. */
  async stopWorker() {
    const w = await this.worker();
    if (!w) throw new Error('no service worker running');
    await this.send('Target.closeTarget', { targetId: w.targetId });
    await waitFor('the worker to stop', async () => !(await this.worker()), { timeoutMs: 5000, intervalMs: 100 });
  }

  /** A new tab on `url`, attached: its target, session, and an `eval` in it. */
  async newTab(url) {
    const { targetId } = await this.send('Target.createTarget', { url });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    const evaluate = async (expression) => {
      const r = await this.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, sessionId);
      if (r.exceptionDetails) throw new Error(`eval: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
      return r.result.value;
    };
    return { targetId, sessionId, evaluate };
  }

  /** Opens the extension's app page in a new tab; returns a handle to evaluate in it. */
  async openApp() {
    const { targetId, evaluate } = await this.newTab(`chrome-extension://${this.extId}/app.html`);
    const page = {
      targetId,
      eval: evaluate,
      /** What the page shows: state, message, session id, retry time, and the worker's status. */
      view: () =>
        page.eval(`(async () => ({
          state: document.getElementById('state')?.dataset.state,
          label: document.getElementById('state')?.textContent,
          message: document.getElementById('message')?.textContent,
          retryAt: document.getElementById('message')?.dataset.retryAt,
          sessionId: document.getElementById('session-id')?.textContent ?? null,
          loginShown: !document.getElementById('login')?.hidden,
          status: (await chrome.storage.session.get('seatkeeper.status'))['seatkeeper.status'] ?? null,
        }))()`),
      close: () => this.send('Target.closeTarget', { targetId }),
    };
    await waitFor('the app page to load', async () => (await page.eval('document.readyState')) === 'complete', { timeoutMs: 10000 });
    return page;
  }

  /** Opens `url` in a new tab; a handle to evaluate in it and to save screenshots of it. */
  async openPage(url) {
    const { targetId, sessionId, evaluate } = await this.newTab(url);
    const page = {
      targetId,
      eval: evaluate,
      /** A PNG of the page, written to `file`. */
      screenshot: async (file) => {
        const { data } = await this.send('Page.captureScreenshot', { format: 'png' }, sessionId);
        await writeFile(file, Buffer.from(data, 'base64'));
      },
      close: () => this.send('Target.closeTarget', { targetId }),
    };
    // A new target starts on about:blank, whose readyState is 'complete' too: wait for the page itself.
    const loaded = `location.href !== 'about:blank' && document.readyState === 'complete'`;
    await waitFor(`${url} to load`, () => page.eval(loaded), { timeoutMs: 10000 });
    return page;
  }

  /** Kills every Chromium process at once: nothing is sent, nothing is flushed. */
  async kill() {
    if (!this.child) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await this.exit;
    this.child = null;
  }

  async close() {
    if (!this.child) return;
    try {
      await this.send('Browser.close', {}, undefined, 3000);
    } catch {
      /* killed below */
    }
    await Promise.race([this.exit, sleep(3000)]);
    await this.kill();
  }
}

/** Samples the license's live seat count until stopped; the highest count seen. */
export function seatWatch(server, licenseId) {
  let max = 0;
  let stopped = false;
  const samples = [];
  const loop = (async () => {
    for (let i = 0; i < 3000 && !stopped; i++) {
      try {
        const a = await server.active(licenseId);
        samples.push(a);
        max = Math.max(max, a);
      } catch {
        /* the server may be stopped on purpose */
      }
      await sleep(100);
    }
  })();
  return {
    get max() {
      return max;
    },
    samples,
    stop: async () => {
      stopped = true;
      await loop;
      return max;
    },
  };
}

export async function cleanup(...things) {
  for (const t of things) {
    try {
      await t?.();
    } catch {
      /* best effort */
    }
  }
}

export { rm };
