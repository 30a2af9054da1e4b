// The reference extension in Debian's headless Chromium against the real runner and a private Redis,
// with 3-second leases. What is asserted is seat state (the service's own stats and debug routes) and
// what the extension's page shows; waits are bounded and generous, never performance claims.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import {
  Browser,
  CHROMIUM,
  SEATKEEPER_BIN,
  Server,
  cleanup,
  log,
  referenceCopy,
  rm,
  seatWatch,
  sleep,
  startRedis,
  tempDir,
  waitFor,
} from './harness.js';

const LEASE = { maxSessions: 1, leaseTtlSeconds: 3, heartbeatIntervalSeconds: 1 };
let redis;
let server;
let n = 0;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}`);
  assert.ok(existsSync(SEATKEEPER_BIN), `seatkeeper not found at ${SEATKEEPER_BIN} (set SEATKEEPER_BIN)`);
  redis = await startRedis();
  server = await Server.start(redis.url);
});

after(async () => {
  await cleanup(() => server?.destroy(), () => redis?.stop());
});

/** A license, an extension copy with a config.json for it, a fresh profile, and a launched browser. */
async function setup(t, { policy = LEASE, config = {} } = {}) {
  const licenseId = `e2e-${process.pid}-${++n}`;
  const licenseKey = await server.license(licenseId, policy);
  const extDir = await referenceCopy({ apiBaseUrl: server.url, licenseKey, feature: 'f', ...config });
  const profileDir = await tempDir('profile');
  const ctx = { licenseId, licenseKey, extDir, profileDir, browser: null };
  ctx.launch = async () => {
    ctx.browser = await Browser.launch({ extDir, profileDir });
    return ctx.browser;
  };
  t.after(() =>
    cleanup(
      () => ctx.browser?.kill(),
      () => rm(extDir, { recursive: true, force: true }),
      () => rm(profileDir, { recursive: true, force: true }),
    ),
  );
  await ctx.launch();
  return ctx;
}

const liveSessions = async (userId) => (await server.sessions(userId)).filter((s) => s.status === 'active');

test('log in from the form: a seat is taken and heartbeats hold it across leases and a stopped worker', { timeout: 90000 }, async (t) => {
  const ctx = await setup(t);
  const page = await ctx.browser.openApp();
  const first = await waitFor('the login form', async () => {
    const v = await page.view();
    return v.state === 'signed-out' && v.loginShown && v;
  });
  assert.equal(first.sessionId, null);
  assert.equal(await server.active(ctx.licenseId), 0, 'no seat before the login');

  await page.eval(`document.getElementById('userId').value = 'alice'; document.getElementById('login-button').click(); true`);
  const active = await waitFor('the seat', async () => {
    const v = await page.view();
    return v.state === 'active' && v.sessionId && v;
  });
  assert.equal(await server.active(ctx.licenseId), 1);
  const [s] = await liveSessions('alice');
  assert.equal(s.sessionId, active.sessionId);

  const watch = seatWatch(server, ctx.licenseId);
  await sleep(7000); // more than two 3-second leases
  assert.deepEqual((await liveSessions('alice')).map((x) => x.sessionId), [active.sessionId], 'the same session, renewed');

  const startsBefore = (await page.view()).status.workerStarts;
  await ctx.browser.stopWorker();
  log('worker stopped');
  // The heartbeat alarm starts it again; the session goes on.
  await waitFor('the worker to be started again by its alarm', () => ctx.browser.worker(), { timeoutMs: 10000 });
  await sleep(7000);
  const after = await page.view();
  assert.equal(after.state, 'active');
  assert.equal(after.sessionId, active.sessionId, 'the session survived the worker stop');
  assert.ok(after.status.workerStarts > startsBefore, `the worker was started again (${startsBefore} -> ${after.status.workerStarts})`);
  assert.deepEqual((await liveSessions('alice')).map((x) => x.sessionId), [active.sessionId]);
  const samples = watch.samples.length;
  assert.equal(await watch.stop(), 1);
  assert.ok(watch.samples.every((a) => a === 1), `the seat was held throughout ${samples} samples: ${watch.samples}`);

  // Logout gives it back.
  await page.eval(`document.getElementById('logout').click(); true`);
  await waitFor('the seat to be free after logout', async () => (await server.active(ctx.licenseId)) === 0, { timeoutMs: 5000 });
});

test('closing the last app tab frees the seat at once; opening one takes it again', { timeout: 90000 }, async (t) => {
  const ctx = await setup(t, { config: { userId: 'bob', autoLogin: true } });
  // autoLogin: the seat is taken at browser start, with no page open and no click.
  await waitFor('the seat taken at start', async () => (await server.active(ctx.licenseId)) === 1, { timeoutMs: 20000 });
  // Another tab (not the extension's) opens and closes: the seat stays.
  const other = await ctx.browser.send('Target.createTarget', { url: 'about:blank' });
  await ctx.browser.send('Target.closeTarget', { targetId: other.targetId });
  await sleep(1500);
  assert.equal(await server.active(ctx.licenseId), 1, 'a tab that is not the extension\'s closing gives nothing back');
  const a = await ctx.browser.openApp();
  const b = await ctx.browser.openApp();
  const v = await waitFor('the page to show the seat', async () => {
    const x = await a.view();
    return x.state === 'active' && x.sessionId && x;
  });
  await b.close();
  await sleep(4000); // longer than a lease: one tab is left, the seat stays
  assert.equal(await server.active(ctx.licenseId), 1, 'one app tab is still open');
  assert.equal((await a.view()).sessionId, v.sessionId);

  const closedAt = Date.now();
  await a.close();
  await waitFor('the seat to be free', async () => (await server.active(ctx.licenseId)) === 0, { timeoutMs: 10000, intervalMs: 50 });
  const took = Date.now() - closedAt;
  log(`seat free ${took} ms after the last tab closed`);
  // The service frees the seat in Redis, then writes the end to the ledger that debug reads.
  const s = await waitFor('the ledger to record the end', async () => {
    const x = (await server.sessions('bob')).find((y) => y.sessionId === v.sessionId);
    return x.status !== 'active' && x;
  }, { timeoutMs: 5000, intervalMs: 50 });
  assert.equal(s.status, 'ended', 'released by the extension, not run out (expired)');

  const c = await ctx.browser.openApp();
  const again = await waitFor('a new seat once a page opens', async () => {
    const x = await c.view();
    return x.state === 'active' && x.sessionId && x;
  });
  assert.notEqual(again.sessionId, v.sessionId);
  assert.equal(await server.active(ctx.licenseId), 1);
});

test('a killed browser: the seat frees when the lease runs out; a restart releases the leftover and logs in again', { timeout: 90000 }, async (t) => {
  // A 10-second lease: killed and started again within it, the start has time to release the leftover
  // even when a loaded machine makes the restart slow.
  const ctx = await setup(t, { policy: { ...LEASE, leaseTtlSeconds: 10 }, config: { userId: 'carol', autoLogin: true } });
  const watch = seatWatch(server, ctx.licenseId);
  t.after(() => watch.stop());
  const [s1] = await waitFor('the first session', () => liveSessions('carol').then((l) => l.length === 1 && l), { timeoutMs: 20000 });

  await ctx.browser.kill();
  log('browser killed');
  await waitFor('the lease to run out', async () => (await server.active(ctx.licenseId)) === 0, { timeoutMs: 25000 });

  const gone = (await server.sessions('carol')).find((x) => x.sessionId === s1.sessionId);
  assert.equal(gone.status, 'expired', 'a killed browser sends nothing: the lease ran out');

  await ctx.launch();
  const [s2] = await waitFor('a new session after the restart', () => liveSessions('carol').then((l) => l.length === 1 && l[0].sessionId !== s1.sessionId && l), { timeoutMs: 20000 });

  // Killed again and started at once, while the lease still runs: the start gives the leftover back
  // before it creates (the old session ends as `ended`, not `replaced` by a takeover). The kill waits
  // until the extension has written the session down: killed between the service's 201 and that write,
  // a browser cannot know of its leftover, and the next create from its device takes the seat over.
  await waitFor('the extension to keep the second session', async () => (await ctx.browser.keptSession())?.sessionId === s2.sessionId, { timeoutMs: 10000 });
  await ctx.browser.kill();
  await ctx.launch();
  const [s3] = await waitFor('a third session', () => liveSessions('carol').then((l) => l.length === 1 && l[0].sessionId !== s2.sessionId && l), { timeoutMs: 20000 });
  const all = await server.sessions('carol');
  const old = all.find((x) => x.sessionId === s2.sessionId);
  const shown = async () => JSON.stringify({ sessions: all, status: (await (await ctx.browser.openApp()).view()).status });
  assert.equal(old.status, 'ended', `the leftover was released at start: ${old.status === 'ended' ? '' : await shown()}`);
  assert.notEqual(s3.sessionId, s1.sessionId);
  await sleep(4000); // the new session is renewed
  assert.equal(await server.active(ctx.licenseId), 1);
  const max = await watch.stop();
  assert.equal(max, 1, `never more than one seat: ${watch.samples.join('')}`);
  assert.ok(watch.samples.includes(0) && watch.samples.includes(1), 'the watch saw the seat taken and freed');
});

test('the service stopped for longer than a lease: the extension recovers by itself', { timeout: 90000 }, async (t) => {
  const ctx = await setup(t, { config: { userId: 'dave', autoLogin: true } });
  const page = await ctx.browser.openApp();
  const before = await waitFor('the seat', async () => {
    const v = await page.view();
    return v.state === 'active' && v.sessionId && v;
  }, { timeoutMs: 20000 });
  await server.stop();
  log('server stopped');
  try {
    const down = await waitFor('the page to say the service is unreachable', async () => {
      const v = await page.view();
      return v.state === 'unavailable' && v;
    }, { timeoutMs: 15000 });
    assert.match(down.label, /unreachable/);
    await sleep(2000);
  } finally {
    await server.start();
    log('server started');
  }
  const recovered = await waitFor('a seat again', async () => {
    const v = await page.view();
    return v.state === 'active' && v.sessionId && v;
  }, { timeoutMs: 20000 });
  assert.notEqual(recovered.sessionId, before.sessionId, 'the old lease ran out; a new session was taken');
  await sleep(4000);
  assert.equal(await server.active(ctx.licenseId), 1);
  assert.deepEqual((await liveSessions('dave')).map((x) => x.sessionId), [(await page.view()).sessionId]);
});

test('the license filled from outside: "Maximum user limit reached" with the retry time, then a seat once one frees', { timeout: 90000 }, async (t) => {
  const licenseId = `e2e-${process.pid}-${++n}`;
  const key = await server.license(licenseId, LEASE);
  // Someone else takes the only seat and keeps it with heartbeats (bounded: at most 60 beats).
  const r = await fetch(`${server.url}/api/licenses/sessions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId: 'outsider', feature: 'f' }),
  });
  assert.equal(r.status, 201);
  const outsider = await r.json();
  let beating = true;
  const beats = (async () => {
    for (let i = 0; i < 60 && beating; i++) {
      await fetch(`${server.url}/api/licenses/sessions/heartbeat`, { method: 'POST', headers: { Authorization: `Bearer ${outsider.sessionToken}` } }).catch(() => {});
      await sleep(1000);
    }
  })();
  t.after(async () => {
    beating = false;
    await beats;
  });

  const extDir = await referenceCopy({ apiBaseUrl: server.url, licenseKey: key, feature: 'f', userId: 'erin', autoLogin: true });
  const profileDir = await tempDir('profile');
  const browser = await Browser.launch({ extDir, profileDir });
  t.after(() => cleanup(() => browser.kill(), () => rm(extDir, { recursive: true, force: true }), () => rm(profileDir, { recursive: true, force: true })));
  const page = await browser.openApp();
  const v = await waitFor('the limit message', async () => {
    const x = await page.view();
    return x.state === 'limit-reached' && x;
  }, { timeoutMs: 20000 });
  assert.equal(v.label, 'Maximum user limit reached');
  assert.match(v.message, /^Maximum user limit reached\. A seat may free up in \d+ s \(at \d\d:\d\d:\d\d\); retrying by itself\.$/);
  assert.ok(Number.isFinite(Date.parse(v.retryAt)), `a retry time: ${v.retryAt}`);
  assert.ok(v.status.retryAfterSeconds >= 1 && v.status.retryAfterSeconds <= 3, `the server's retry time for a 3 s lease: ${v.status.retryAfterSeconds}`);
  await sleep(5000); // past the retry time and its jitter (at most half of it)
  assert.equal((await page.view()).state, 'limit-reached', 'still refused while the outsider holds the seat');
  assert.equal(await server.active(licenseId), 1);
  assert.ok((await server.stats(licenseId)).limitRejections >= 2, 'the extension kept asking, on its alarms');

  // The outsider leaves: the extension takes the seat by itself.
  beating = false;
  await beats;
  const c = await fetch(`${server.url}/api/licenses/sessions/cleanup`, { method: 'POST', body: JSON.stringify({ sessionToken: outsider.sessionToken }) });
  assert.equal(c.status, 200);
  const got = await waitFor('the seat once it is free', async () => {
    const x = await page.view();
    return x.state === 'active' && x.sessionId && x;
  }, { timeoutMs: 15000 });
  assert.deepEqual((await liveSessions('erin')).map((x) => x.sessionId), [got.sessionId]);
  assert.equal((await page.view()).message, '');
});

test('an administrator ends the session: the page says so and the seat is not taken back', { timeout: 60000 }, async (t) => {
  const ctx = await setup(t, { config: { userId: 'fay', autoLogin: true } });
  const page = await ctx.browser.openApp();
  const v = await waitFor('the seat', async () => {
    const x = await page.view();
    return x.state === 'active' && x.sessionId && x;
  }, { timeoutMs: 20000 });
  const r = await server.api('DELETE', `/api/licenses/sessions/force-cleanup/fay/f?licenseId=${ctx.licenseId}`);
  assert.equal(r.status, 200);
  assert.deepEqual(r.data.sessionIds, [v.sessionId]);
  const lost = await waitFor('the page to say it was ended', async () => {
    const x = await page.view();
    return x.state === 'lost' && x;
  }, { timeoutMs: 10000 });
  assert.equal(lost.status.reason, 'force_ended');
  assert.match(lost.message, /administrator/);
  assert.ok(lost.loginShown, 'the login form is offered again');
  await sleep(4000);
  assert.equal(await server.active(ctx.licenseId), 0, 'not taken back by itself');
  await page.eval(`document.getElementById('login-button').click(); true`); // userId prefilled from config
  await waitFor('a seat after logging in again', async () => (await page.view()).state === 'active', { timeoutMs: 10000 });
  assert.equal(await server.active(ctx.licenseId), 1);
});

test('the worker stops by itself when idle and its heartbeat alarm starts it again: the session goes on', { timeout: 90000 }, async (t) => {
  // Heartbeats 36 s apart: longer than Chromium's 30 s idle limit, so the worker really goes idle.
  // No page is open and nothing attaches to the worker.
  const ctx = await setup(t, { policy: { maxSessions: 1, leaseTtlSeconds: 45, heartbeatIntervalSeconds: 36 }, config: { userId: 'gus', autoLogin: true } });
  const [s] = await waitFor('the seat taken at start', () => liveSessions('gus').then((l) => l.length === 1 && l), { timeoutMs: 20000 });
  const stoppedAt = await waitFor('the worker to stop by itself', async () => !(await ctx.browser.worker()) && Date.now(), { timeoutMs: 45000, intervalMs: 250 });
  log(`worker stopped by itself ${Math.round((stoppedAt - Date.parse(s.createdAt)) / 1000)} s after the session was created`);
  const renewed = await waitFor('a heartbeat from the restarted worker', async () => {
    const [x] = await liveSessions('gus');
    return x && x.lastHeartbeatAt !== s.lastHeartbeatAt && x;
  }, { timeoutMs: 30000, intervalMs: 250 });
  assert.equal(renewed.sessionId, s.sessionId, 'the same session, renewed after the worker stop');
  assert.ok(Date.parse(renewed.lastHeartbeatAt) > stoppedAt - 1000, 'the heartbeat came after the stop');
  assert.ok(await ctx.browser.worker(), 'the alarm started the worker');
  assert.equal(await server.active(ctx.licenseId), 1);
});
