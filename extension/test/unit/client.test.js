import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, readFile, readlink } from 'node:fs/promises';
import { world } from './fakes.js';

const ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/;

test('login takes a seat with a stable deviceId and a fresh idempotencyKey, and arms the heartbeat alarm', async () => {
  const w = world();
  await w.start();
  assert.equal((await w.status()).state, 'signed-out');
  assert.equal(w.service.calls.length, 0, 'nothing is asked of the service before a login');

  const st = await w.client.login('alice');
  assert.equal(st.state, 'active');
  const [create] = w.service.callsTo('/api/licenses/sessions');
  assert.equal(create.auth, 'lic-key');
  assert.equal(create.body.userId, 'alice');
  assert.equal(create.body.feature, 'f');
  assert.match(create.body.deviceId, ID_RE);
  assert.match(create.body.idempotencyKey, ID_RE);
  assert.equal(create.body.metadata.extensionVersion, '9.9.9');
  assert.equal(create.path, '/api/licenses/sessions', 'a trailing slash of apiBaseUrl is trimmed');
  assert.equal(w.browser.alarmAt(), w.clock.t + 30_000, 'next heartbeat at the interval the service gave');
  assert.equal(w.service.live().length, 1);
  assert.equal(w.eventsOf('session-started').length, 1);
  const local = w.browser.local.data;
  assert.equal(local['seatkeeper.session'].sessionId, st.sessionId, 'a copy survives in storage.local');
  assert.equal(local['seatkeeper.intent'].userId, 'alice');

  // The deviceId is the same after a browser restart; the idempotencyKey is new for a new attempt.
  await w.client.logout();
  w.browser.startBrowser();
  await w.start();
  await w.client.login('alice');
  const creates = w.service.callsTo('/api/licenses/sessions');
  assert.equal(creates.length, 2);
  assert.equal(creates[1].body.deviceId, creates[0].body.deviceId);
  assert.notEqual(creates[1].body.idempotencyKey, creates[0].body.idempotencyKey);
});

test('heartbeats ride the alarm at the interval and keep the seat across many leases', async () => {
  const w = world({ service: { leaseTtlSeconds: 3, heartbeatIntervalSeconds: 1 } });
  await w.start();
  const { sessionId } = await w.client.login('alice');
  await w.advance(20_000);
  const beats = w.service.callsTo('/heartbeat');
  assert.ok(beats.length >= 18 && beats.length <= 21, `about one a second: ${beats.length}`);
  assert.ok(beats.every((c) => c.auth === 'tok1'), 'heartbeats carry the session token as Bearer');
  assert.equal(w.service.live().length, 1);
  assert.equal((await w.status()).sessionId, sessionId);
  assert.equal(w.service.callsTo('/api/licenses/sessions').length, 1, 'no second create');
});

test('a worker restart resumes the session: alarm re-created, no release, no create', async () => {
  const w = world({ service: { leaseTtlSeconds: 3, heartbeatIntervalSeconds: 1 } });
  await w.start();
  const { sessionId } = await w.client.login('alice');
  await w.advance(2_500);
  // The worker is stopped: listeners and memory are gone; alarms and storage.session are not.
  w.browser.alarms.clear(); // and even if the alarm were lost, the start re-creates it
  w.browser.newWorker();
  await w.start();
  assert.ok(w.browser.alarmAt() != null, 'the alarm is re-created at worker start');
  await w.advance(10_000);
  const st = await w.status();
  assert.equal(st.state, 'active');
  assert.equal(st.sessionId, sessionId);
  assert.equal(st.workerStarts, 2);
  assert.equal(w.service.callsTo('/cleanup').length, 0);
  assert.equal(w.service.callsTo('/api/licenses/sessions').length, 1);
  assert.equal(w.service.live().length, 1);
});

test('a browser restart releases the leftover session before it creates a new one: one seat throughout', async () => {
  const w = world({ settings: { userId: 'carol', autoLogin: true } });
  await w.start();
  const first = await w.client.status();
  assert.equal(first.state, 'active', 'autoLogin takes a seat at start with no click');
  // Killed: nothing is sent. The next start has storage.local only.
  w.browser.startBrowser();
  w.clock.t += 1_000;
  await w.start();
  const paths = w.service.calls.map((c) => c.path.replace('/api/licenses/sessions', '') || 'create');
  assert.deepEqual(paths, ['create', '/cleanup', 'create'], 'release first, then create');
  const cleanup = w.service.callsTo('/cleanup')[0];
  assert.equal(cleanup.body.sessionToken, 'tok1', 'the token goes in the body');
  assert.equal(w.service.sessions.get('tok1').status, 'ended');
  assert.equal(w.service.live().length, 1);
  const st = await w.client.status();
  assert.equal(st.state, 'active');
  assert.notEqual(st.sessionId, first.sessionId);
  assert.equal(st.leftoverRelease.ended, true);
});

test('a leftover that cannot be released does not block the start; the takeover keeps one seat', async () => {
  const w = world({ settings: { userId: 'carol', autoLogin: true } });
  await w.start();
  w.browser.startBrowser();
  w.service.next.push(() => {
    throw new TypeError('fetch failed');
  });
  await w.start();
  assert.equal((await w.client.status()).state, 'active');
  assert.equal(w.service.sessions.get('tok1').status, 'replaced', 'same user and device: taken over');
  assert.equal(w.service.live().length, 1);
});

test('create retries on 503 and network errors reuse the idempotencyKey, with jittered growing back-off', async () => {
  const w = world();
  await w.start();
  w.service.down = true;
  await w.client.login('alice');
  assert.equal((await w.status()).state, 'unavailable', 'no lease to protect: the UI is told at once');
  const delays = [];
  let last = w.clock.t;
  for (let i = 0; i < 6; i++) {
    const at = w.browser.alarmAt();
    delays.push(at - last);
    last = at;
    w.service.unavailable = i >= 2;
    w.service.down = i < 2;
    await w.advance(at - w.clock.t);
  }
  const creates = w.service.callsTo('/api/licenses/sessions');
  assert.equal(creates.length, 7);
  assert.equal(new Set(creates.map((c) => c.body.idempotencyKey)).size, 1, 'one attempt, one key');
  assert.ok(delays[1] > delays[0], `back-off grows: ${delays}`);
  assert.ok(delays.every((d) => d <= 60_000), `bounded: ${delays}`);
  assert.ok(delays.slice(2).every((d) => d >= 2_000), `Retry-After is honoured: ${delays}`);
  assert.equal(w.eventsOf('unavailable').length, 1, 'told once, not at every retry');
  w.service.unavailable = false;
  await w.advance(w.browser.alarmAt() - w.clock.t);
  assert.equal((await w.status()).state, 'active');
  assert.equal(w.service.live().length, 1);
  // A new attempt after success gets a new key.
  await w.client.logout();
  await w.client.login('alice');
  const again = w.service.callsTo('/api/licenses/sessions').at(-1);
  assert.notEqual(again.body.idempotencyKey, creates[0].body.idempotencyKey);
});

test('jitter spreads the back-off between half and all of the step', async () => {
  const delaysFor = async (r) => {
    const w = world();
    await w.start();
    w.randomValue = r;
    w.service.down = true;
    await w.client.login('alice');
    return w.browser.alarmAt() - w.clock.t;
  };
  assert.equal(await delaysFor(0), 500);
  assert.equal(await delaysFor(0.999999), 1000);
});

test('a heartbeat outage is silent while the lease lasts, told once after, and recovered by a new session', async () => {
  const w = world({ service: { leaseTtlSeconds: 3, heartbeatIntervalSeconds: 1 } });
  await w.start();
  const { sessionId } = await w.client.login('alice');
  w.service.down = true;
  await w.advance(2_000);
  assert.equal((await w.status()).state, 'active', 'within the lease the UI is not bothered');
  assert.equal(w.eventsOf('unavailable').length, 0);
  await w.advance(8_000);
  assert.equal((await w.status()).state, 'unavailable');
  assert.equal(w.eventsOf('unavailable').length, 1);
  const tries = w.service.callsTo('/heartbeat').length;
  assert.ok(tries >= 5 && tries <= 12, `retries on alarms, bounded by the 2 s cap: ${tries}`);
  w.service.down = false;
  await w.advance(3_000);
  const st = await w.status();
  assert.equal(st.state, 'active');
  assert.notEqual(st.sessionId, sessionId, 'the expired lease was replaced by a new session');
  assert.equal(w.service.live().length, 1);
  assert.ok(w.eventsOf('session-lost').some((e) => e.reason === 'expired' && e.renewing));
});

for (const reason of ['replaced', 'evicted', 'revoked', 'force_ended']) {
  test(`410 ${reason}: the UI is told, the seat is not taken again`, async () => {
    const w = world();
    await w.start();
    await w.client.login('alice');
    w.service.sessions.get('tok1').status = reason;
    await w.advance(30_000);
    const st = await w.status();
    assert.equal(st.state, 'lost');
    assert.equal(st.reason, reason);
    assert.ok(st.message);
    assert.equal(w.browser.alarmAt(), null, 'no more alarms');
    assert.deepEqual(
      w.eventsOf('session-lost').map((e) => [e.reason, e.renewing]),
      [[reason, false]],
    );
    await w.advance(120_000);
    assert.equal(w.service.callsTo('/api/licenses/sessions').length, 1, 'no re-create');
    // A worker restart does not take it either; a new login does.
    w.browser.newWorker();
    await w.start();
    assert.equal(w.service.callsTo('/api/licenses/sessions').length, 1);
    assert.equal((await w.client.login('alice')).state, 'active');
  });
}

test('410 ended and 401 unknown token: a new session is taken at once', async () => {
  const w = world();
  await w.start();
  await w.client.login('alice');
  w.service.sessions.get('tok1').status = 'ended';
  await w.advance(30_000);
  assert.equal((await w.status()).sessionId, 's2');
  w.service.sessions.delete('tok2');
  await w.advance(30_000);
  assert.equal((await w.status()).sessionId, 's3');
  assert.equal((await w.status()).state, 'active');
});

test('409: "Maximum user limit reached" with the retry time, retried on an alarm after it', async () => {
  const w = world({ service: { leaseTtlSeconds: 20 } });
  await w.start();
  // Someone else holds the only seat.
  const other = await w.service.fetch('http://x/api/licenses/sessions', {
    method: 'POST',
    headers: { Authorization: 'Bearer lic-key' },
    body: JSON.stringify({ userId: 'bob', feature: 'f' }),
  });
  assert.equal(other.status, 201);
  const st = await w.client.login('alice');
  assert.equal(st.state, 'limit-reached');
  assert.equal(st.message, 'Maximum user limit reached');
  assert.equal(st.retryAfterSeconds, 20);
  assert.equal(Date.parse(st.retryAt), w.clock.t + 20_000);
  const [ev] = w.eventsOf('limit-reached');
  assert.equal(ev.retryAfterSeconds, 20);
  assert.ok(w.browser.alarmAt() >= w.clock.t + 20_000, 'no retry before the retry time');
  const keys = new Set([w.service.callsTo('/api/licenses/sessions').at(-1).body.idempotencyKey]);
  await w.advance(26_000); // bob's lease runs out
  const after = await w.status();
  assert.equal(after.state, 'active');
  assert.equal(after.retryAt, null);
  const creates = w.service.callsTo('/api/licenses/sessions').slice(1);
  assert.equal(creates.length, 2);
  keys.add(creates[1].body.idempotencyKey);
  assert.equal(keys.size, 2, 'a refused attempt is over: the next one has a new key');
});

test('closing the last extension page releases with a keepalive fetch at once; reopening takes a seat again', async () => {
  const w = world({ settings: { userId: 'bob', autoLogin: true } });
  w.browser.openPage(11);
  w.browser.openPage(12);
  await w.start();
  assert.equal(w.service.live().length, 1);
  w.browser.closePage(11);
  await w.settle();
  assert.equal(w.service.callsTo('/cleanup').length, 0, 'another page is still open');
  w.browser.closePage(12);
  await w.settle();
  const [cleanup] = w.service.callsTo('/cleanup');
  assert.ok(cleanup, 'released');
  assert.equal(cleanup.at, w.clock.t, 'at once, no timer');
  assert.equal(cleanup.init.keepalive, true);
  assert.equal(cleanup.body.sessionToken, 'tok1');
  assert.match(cleanup.init.headers['Content-Type'], /^text\/plain/, 'a CORS-simple request');
  assert.equal(w.service.live().length, 0);
  assert.equal((await w.status()).state, 'paused');
  assert.equal(w.browser.alarmAt(), null);
  assert.ok(w.eventsOf('session-ended').some((e) => e.why === 'pages-closed'));

  // A worker restart while paused does not take the seat back.
  w.browser.newWorker();
  await w.start();
  assert.equal(w.service.live().length, 0);
  // A page opens and says so: the seat is taken again.
  w.browser.openPage(13);
  assert.equal((await w.client.resume()).state, 'active');
  assert.equal(w.service.live().length, 1);
});

test('a seat taken at start with no page open is kept when other tabs close; a page seen at a heartbeat counts', async () => {
  const w = world({ settings: { userId: 'bob', autoLogin: true } });
  await w.start();
  assert.equal(w.service.live().length, 1);
  w.browser.chrome.tabs.onRemoved.fire(99, { windowId: 1, isWindowClosing: false }); // not one of ours
  await w.settle();
  assert.equal(w.service.callsTo('/cleanup').length, 0, 'an unrelated tab closing gives nothing back');
  // A page opens without telling the worker; the next heartbeat sees it; its close is the last one.
  w.browser.openPage(7);
  await w.advance(30_000);
  w.browser.closePage(7);
  await w.settle();
  assert.equal(w.service.callsTo('/cleanup').length, 1);
  assert.equal(w.service.live().length, 0);
});

test('tracking all tabs: the seat goes when the browser\'s last tab closes, and comes back with a new tab', async () => {
  const w = world({ track: 'all', settings: { userId: 'bob', autoLogin: true } });
  w.browser.tabs = [{ id: 1, url: 'https://example.com/' }];
  await w.start();
  w.browser.tabs = [];
  w.browser.chrome.tabs.onRemoved.fire(1, { windowId: 1, isWindowClosing: true });
  await w.settle();
  assert.equal(w.service.live().length, 0);
  w.browser.tabs = [{ id: 2, url: 'https://example.com/' }];
  w.browser.chrome.tabs.onCreated.fire({ id: 2 });
  await w.settle();
  assert.equal(w.service.live().length, 1);
});

test('logout releases the seat and forgets the user; autoLogin comes back only at the next browser start', async () => {
  const w = world({ settings: { userId: 'dan', autoLogin: true } });
  await w.start();
  assert.equal(w.service.live().length, 1);
  const st = await w.client.logout();
  assert.equal(st.state, 'signed-out');
  assert.equal(w.service.live().length, 0);
  assert.equal(w.browser.alarmAt(), null);
  assert.equal(w.browser.local.data['seatkeeper.session'], undefined);
  w.browser.newWorker();
  await w.start();
  assert.equal(w.service.live().length, 0, 'a worker restart keeps the logout');
  w.browser.startBrowser();
  await w.start();
  assert.equal(w.service.live().length, 1, 'a browser start logs in again with autoLogin');
});

test('wrong settings or license: an error for the UI, no retry loop', async () => {
  const w = world({ settings: { licenseKey: 'nope' } });
  await w.start();
  const st = await w.client.login('alice');
  assert.equal(st.state, 'error');
  assert.equal(st.code, 'unauthorized');
  assert.equal(w.browser.alarmAt(), null);
  const bad = await w.client.login('not a valid id!');
  assert.equal(bad.state, 'error');
  w.settings = { feature: 'f' };
  const missing = await w.client.login('alice');
  assert.match(missing.message, /apiBaseUrl, licenseKey/);
});

test('events arriving together are handled one at a time', async () => {
  const w = world({ service: { leaseTtlSeconds: 3, heartbeatIntervalSeconds: 1 } });
  await w.start();
  await w.client.login('alice');
  w.clock.t += 1_000;
  for (let i = 0; i < 5; i++) w.browser.chrome.alarms.onAlarm.fire({ name: 'seatkeeper' });
  await w.settle();
  assert.equal(w.service.callsTo('/heartbeat').length, 1, 'one heartbeat for a burst of alarms');
});

test('the module never uses setInterval, and the reference extension loads the module itself', async () => {
  const src = await readFile(new URL('../../seatkeeper.js', import.meta.url), 'utf8');
  assert.doesNotMatch(src.replace(/\/\/.*$/gm, ''), /setInterval|setTimeout/);
  // An unpacked extension loads only files inside its folder: a symbolic link, not a copy that
  // could drift (Chromium follows it; the end-to-end tests load the extension through it).
  const link = new URL('../../reference/lib/seatkeeper.js', import.meta.url);
  assert.ok((await lstat(link)).isSymbolicLink(), 'extension/reference/lib/seatkeeper.js is a link');
  assert.equal(await readlink(link), '../../seatkeeper.js');
});
