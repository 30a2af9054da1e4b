// The service's own console (GET /admin) in Debian's headless Chromium against the real runner: an
// operator signs in with the admin token, watches a session created through the API appear, ends
// it from the page, and the API sees the seat freed. Screenshots go to SEATKEEPER_E2E_OUT (default
// target/e2e/console under the repository). Waits are bounded, never performance claims.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { ADMIN_TOKEN, Browser, CHROMIUM, REPO, SEATKEEPER_BIN, Server, cleanup, log, startRedis, tempDir, waitFor } from './harness.js';

const OUT = process.env.SEATKEEPER_E2E_OUT ?? path.join(REPO, 'target/e2e/console');
let redis;
let server;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}`);
  assert.ok(existsSync(SEATKEEPER_BIN), `seatkeeper not found at ${SEATKEEPER_BIN} (set SEATKEEPER_BIN)`);
  await mkdir(OUT, { recursive: true });
  redis = await startRedis();
  server = await Server.start(redis.url);
  browser = await Browser.launch({ profileDir: await tempDir('console-profile') });
});

after(async () => {
  await cleanup(() => browser?.close(), () => server?.destroy(), () => redis?.stop());
});

test('the console is served with a strict policy and the contract error shape', async () => {
  const page = await fetch(`${server.url}/admin`);
  assert.equal(page.status, 200);
  const csp = page.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const missing = await fetch(`${server.url}/admin/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, 'not_found');
});

test('an operator watches a session appear, ends it from the page, and the seat is free', async () => {
  const license = `console-${process.pid}`;
  const key = await server.license(license, { maxSessions: 2, leaseTtlSeconds: 60, heartbeatIntervalSeconds: 20 });
  const page = await browser.openPage(`${server.url}/admin`);
  await waitFor('the console script to start', () => page.eval(`document.body.dataset.ready === 'true'`));
  // Anything the policy blocked would show here as a security-policy violation.
  await page.eval(`window.__violations = []; document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective)); true`);

  await page.eval(`(() => {
    document.getElementById('token').value = ${JSON.stringify(ADMIN_TOKEN)};
    document.getElementById('sign-in').requestSubmit();
    return true;
  })()`);
  let said = '';
  await waitFor('the license list', async () => {
    said = await page.eval(`document.getElementById('message').textContent`);
    return page.eval(`!!document.querySelector('#license-rows tr[data-license=${JSON.stringify(license)}]')`);
  }).catch((err) => {
    throw new Error(`${err.message}; the page said: ${JSON.stringify(said)}`);
  });
  assert.equal(await page.eval(`document.getElementById('token').value`), '', 'the token field is emptied');
  assert.equal(await page.eval(`location.href.includes(${JSON.stringify(ADMIN_TOKEN)})`), false, 'no token in the URL');
  assert.equal(await page.eval(`localStorage.length + sessionStorage.length + document.cookie.length`), 0, 'nothing stored');
  await page.screenshot(path.join(OUT, '1-licenses.png'));

  await page.eval(`document.querySelector('#license-rows tr[data-license=${JSON.stringify(license)}] button').click(); true`);
  await waitFor('the license page', () => page.eval(`!document.getElementById('license').hidden`));

  // A session created through the API shows up by itself.
  const created = await fetch(`${server.url}/api/licenses/sessions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId: 'alice', feature: 'f', deviceId: 'laptop-7' }),
  });
  assert.equal(created.status, 201);
  const session = await created.json();
  const row = `#session-rows tr[data-session="${session.sessionId}"]`;
  await waitFor('the new session on the page', () => page.eval(`!!document.querySelector('${row}')`), { timeoutMs: 10000 });
  const cells = await page.eval(`[...document.querySelectorAll('${row} td')].map((td) => td.textContent)`);
  assert.equal(cells[0], 'alice');
  assert.equal(cells[1], 'laptop-7');
  assert.equal(await page.eval(`document.querySelector('#seat-bars meter').value`), 1);
  await page.screenshot(path.join(OUT, '2-session-live.png'));

  // End it from the page, confirming the dialog.
  await page.eval(`window.confirm = (text) => { window.__asked = text; return true; }; document.querySelector('${row} button.end').click(); true`);
  await waitFor('the seat freed in the API', async () => (await server.active(license)) === 0);
  assert.match(await page.eval('window.__asked'), /alice/);
  await waitFor('the row gone from the page', () => page.eval(`!document.querySelector('${row}')`));
  const heartbeat = await fetch(`${server.url}/api/licenses/sessions/heartbeat`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${session.sessionToken}` },
  });
  assert.equal(heartbeat.status, 410);
  assert.equal((await heartbeat.json()).error.reason, 'force_ended');
  assert.match(await page.eval(`document.getElementById('message').textContent`), /Ended alice/);
  assert.equal(await page.eval(`!!document.querySelector('#usage svg')`), true, 'the usage chart is drawn');
  await page.screenshot(path.join(OUT, '3-ended.png'));
  assert.deepEqual(await page.eval('window.__violations'), [], 'nothing the policy blocks');
  log('console screenshots in', OUT);
  await page.close();
});
