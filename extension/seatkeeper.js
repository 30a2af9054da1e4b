// seatkeeper session client for Manifest V3 extensions. No dependencies.
//
// Import it in the extension's service worker and call createSeatClient() at the top level, so its
// listeners are registered synchronously at every worker start. The server-side lease is the guarantee
// of release; this client heartbeats on chrome.alarms while the seat is wanted, releases the seat when
// it can (logout, last extension page closed, a leftover found at worker start) and recovers from
// everything else. It never uses setInterval, and no timer decides a release.
//
// Canonical copy: extension/seatkeeper.js. extension/reference/lib/seatkeeper.js is a byte-identical
// copy (an unpacked extension cannot load files outside its folder); a unit test holds them equal.

export const VERSION = '0.1.0';

const SESSION_PATH = '/api/licenses/sessions';
const HEARTBEAT_PATH = '/api/licenses/sessions/heartbeat';
const CLEANUP_PATH = '/api/licenses/sessions/cleanup';

/** Reasons of a 410 after which the client takes a new seat by itself. */
const RENEWABLE_REASONS = new Set(['expired', 'ended']);

/** Statuses worth retrying with back-off: the service or the network is down, not the request. */
function isRetryable(status) {
  return status === 0 || status === 408 || status === 429 || status >= 500;
}

/**
 * @typedef {import('./seatkeeper.d.ts').SeatSettings} SeatSettings
 * @typedef {import('./seatkeeper.d.ts').SeatClientOptions} SeatClientOptions
 * @typedef {import('./seatkeeper.d.ts').SeatStatus} SeatStatus
 */

/**
 * Creates the client and starts it (releases a leftover session, then takes a seat if one is wanted).
 * Call once, synchronously, at the top level of the service worker.
 * @param {SeatClientOptions} options
 * @returns {SeatClient}
 */
export function createSeatClient(options) {
  return new SeatClient(options);
}

export class SeatClient {
  /** @param {SeatClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getSettings !== 'function') {
      throw new TypeError('createSeatClient: options.getSettings (an async function) is required');
    }
    this.chrome = options.chrome ?? globalThis.chrome;
    this.fetch = options.fetch ?? ((url, init) => globalThis.fetch(url, init));
    this.now = options.now ?? (() => Date.now());
    this.random = options.random ?? Math.random;
    this.newId = options.newId ?? (() => globalThis.crypto.randomUUID());
    this.getSettings = options.getSettings;
    this.track = options.track ?? 'extension';
    this.alarmName = options.alarmName ?? 'seatkeeper';
    this.prefix = options.storagePrefix ?? 'seatkeeper.';
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.maxBackoffSeconds = options.maxBackoffSeconds ?? 60;
    this.metadata = options.metadata ?? {};
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
    this.queue = Promise.resolve();
    this.st = null;
    this.registerListeners();
    /** Settles when the worker-start routine has run. */
    this.ready = this.run(() => this.boot());
  }

  // ---- public API ------------------------------------------------------------------------------

  /**
   * Subscribes to an event; returns the function that unsubscribes.
   * @param {string} type
   * @param {(detail: any) => void} fn
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  /** The current status, as also kept in storage.session under `<prefix>status`. */
  async status() {
    await this.ready;
    return this.publicStatus();
  }

  /**
   * Logs in as userId: remembers it (storage.local) and takes a seat.
   * @param {string} userId
   */
  login(userId) {
    return this.run(async () => {
      if (typeof userId !== 'string' || !/^[A-Za-z0-9._:@-]{1,128}$/.test(userId)) {
        this.setPhase('error', { message: 'A user id is 1 to 128 characters of A-Z a-z 0-9 . _ : @ -' });
        await this.save();
        return this.publicStatus();
      }
      await this.area('local').set({ [this.key('intent')]: { userId } });
      this.st.loggedOut = false;
      this.st.parked = false;
      if (this.st.session && this.st.session.userId !== userId) {
        await this.releaseSession('switch-user');
      }
      if (!this.st.session) {
        this.st.attempt = null;
        this.st.failures = 0;
        await this.create(userId);
      }
      await this.save();
      return this.publicStatus();
    });
  }

  /** Logs out: forgets the user and releases the seat. */
  logout() {
    return this.run(async () => {
      await this.area('local').remove(this.key('intent'));
      this.st.loggedOut = true;
      this.st.parked = false;
      this.st.attempt = null;
      await this.clearAlarm();
      if (this.st.session) await this.releaseSession('logout');
      this.setPhase('signed-out');
      await this.save();
      return this.publicStatus();
    });
  }

  /**
   * An extension page opened (the page says so): take the seat again if it was given back when the
   * last page closed, or retry at once after an error.
   */
  resume() {
    return this.run(async () => {
      await this.notePages();
      const wasParked = this.st.parked;
      this.st.parked = false;
      if (wasParked || ['error', 'paused'].includes(this.st.phase)) {
        this.st.failures = 0;
        await this.ensure();
      }
      await this.save();
      return this.publicStatus();
    });
  }

  // ---- events from the browser -----------------------------------------------------------------

  registerListeners() {
    const c = this.chrome;
    c.alarms.onAlarm.addListener((alarm) => {
      if (alarm.name === this.alarmName) this.run(() => this.tick());
    });
    c.tabs?.onRemoved?.addListener((tabId) => {
      if (this.track !== 'none') this.run(() => this.onTabRemoved(tabId));
    });
    if (Array.isArray(this.track) || this.track === 'all') {
      c.tabs?.onCreated?.addListener(() => this.run(() => this.onTabOpened()));
      c.tabs?.onUpdated?.addListener((_id, change) => {
        if (change.url) this.run(() => this.onTabOpened());
      });
    }
    // The work happens at every worker start (see boot). These listeners are registered so that the
    // browser starts the worker at its own start (onStartup) and after an install or update.
    c.runtime.onStartup?.addListener(() => {});
    c.runtime.onInstalled?.addListener(() => {});
  }

  /** Serializes every operation: events may arrive while a request is in flight. */
  run(fn) {
    const p = this.queue.then(fn);
    this.queue = p.catch((err) => this.emit('error', { message: String(err?.message ?? err) }));
    return p;
  }

  /** Worker start: resume in this browser session, or release a leftover and start afresh. */
  async boot() {
    try {
      await this.startWorker();
    } catch (err) {
      this.st ??= freshState();
      this.setPhase('error', { message: `Start failed: ${err?.message ?? err}` });
      throw err;
    }
  }

  async startWorker() {
    const stateKey = this.key('state');
    const kept = (await this.area('session').get(stateKey))[stateKey];
    const local = await this.area('local').get([this.key('session'), this.key('deviceId')]);
    if (!local[this.key('deviceId')]) {
      await this.area('local').set({ [this.key('deviceId')]: `ext-${this.newId()}` });
    }
    if (kept) {
      // The worker was stopped (idle) and started again in the same browser session: alarms and
      // storage.session survived, but re-create the alarm anyway.
      this.st = kept;
      this.st.workerStarts = (this.st.workerStarts ?? 0) + 1;
      await this.notePages();
      if (this.st.nextAt) {
        await this.setAlarm(Math.max(this.st.nextAt, this.now()));
      } else if (!this.st.session && ['starting', 'connecting'].includes(this.st.phase)) {
        await this.ensure(); // stopped halfway through a start
      }
      await this.save();
      return;
    }
    // Browser start, install, update or reload: storage.session and alarms are gone. A session still
    // in storage.local was left by a crash, a kill or a shutdown: give it back before taking a new one.
    this.st = freshState();
    this.st.workerStarts = 1;
    const leftover = local[this.key('session')];
    if (leftover) {
      const res = await this.postCleanup(leftover, false);
      this.st.leftoverRelease = { sessionId: leftover.sessionId, status: res.status, ended: res.data?.ended ?? null };
      // Released or not (a failure leaves it to its lease, and a new create from this deviceId takes
      // its seat over), it is forgotten: one seat throughout.
      await this.area('local').remove(this.key('session'));
      this.emit('session-ended', { why: 'leftover', sessionId: leftover.sessionId, released: res.data?.ended === true });
    }
    await this.notePages();
    await this.ensure();
    await this.save();
  }

  async tick() {
    const st = this.st;
    if (!st.nextAt) return;
    // An alarm re-created at worker start may fire next to the one that woke the worker.
    if (this.now() + 250 < st.nextAt) {
      await this.setAlarm(st.nextAt);
      return;
    }
    st.nextAt = null;
    if (st.parked) return;
    await this.notePages();
    if (st.session) {
      await this.heartbeat();
    } else {
      await this.ensure();
    }
    await this.save();
  }

  async onTabRemoved(tabId) {
    const st = this.st;
    const known = st.pageTabs ?? [];
    const wasOurs = known.includes(tabId);
    const left = await this.openPages(tabId);
    st.pageTabs = left.tabIds;
    const waiting = ['connecting', 'limit-reached', 'unavailable'].includes(st.phase);
    // Only the close of the last of our pages gives the seat back: a seat taken at start with no page
    // open (autoLogin) is not given back when some other tab closes.
    if (!wasOurs || left.any || (!st.session && !waiting)) {
      if (wasOurs) await this.save();
      return;
    }
    // The last page closed: give the seat back now, with a keepalive fetch and no timer.
    st.parked = true;
    st.attempt = null;
    await this.clearAlarm();
    st.nextAt = null;
    if (st.session) await this.releaseSession('pages-closed');
    this.setPhase('paused');
    await this.save();
  }

  async onTabOpened() {
    await this.notePages();
    if (!this.st.parked || !this.st.pageTabs.length) return;
    this.st.parked = false;
    await this.ensure();
    await this.save();
  }

  /**
   * The pages the seat is for that are open, leaving out a tab being removed: their tab ids, and
   * whether any page (popups and side panels included) is left.
   */
  async openPages(removedTabId) {
    const c = this.chrome;
    if (this.track === 'none') return { tabIds: [], any: false };
    if (this.track === 'extension') {
      if (c.runtime.getContexts) {
        const contexts = (await c.runtime.getContexts({ contextTypes: ['TAB', 'POPUP', 'SIDE_PANEL'] })).filter((ctx) => ctx.tabId !== removedTabId || ctx.tabId === -1);
        const tabIds = contexts.filter((ctx) => ctx.contextType === 'TAB' && ctx.tabId >= 0).map((ctx) => ctx.tabId);
        return { tabIds, any: contexts.length > 0 };
      }
      const origin = c.runtime.getURL('');
      const tabs = (await c.tabs.query({})).filter((t) => t.id !== removedTabId && (t.url ?? t.pendingUrl ?? '').startsWith(origin));
      return { tabIds: tabs.map((t) => t.id), any: tabs.length > 0 };
    }
    const tabs = (await c.tabs.query(this.track === 'all' ? {} : { url: this.track })).filter((t) => t.id !== removedTabId);
    return { tabIds: tabs.map((t) => t.id), any: tabs.length > 0 };
  }

  /** Remembers which of our pages are open, so that a tab's close can be told to be one of ours. */
  async notePages() {
    try {
      this.st.pageTabs = (await this.openPages(null)).tabIds;
    } catch {
      /* keep what was known */
    }
  }

  // ---- the session ----------------------------------------------------------------------------

  /** Takes a seat when one is wanted and none is held. */
  async ensure() {
    const st = this.st;
    if (st.session) return;
    const userId = await this.wantedUser();
    if (!userId) {
      st.attempt = null;
      await this.clearAlarm();
      st.nextAt = null;
      if (!['lost', 'error'].includes(st.phase)) this.setPhase('signed-out');
      return;
    }
    if (st.parked) {
      this.setPhase('paused');
      return;
    }
    if (st.phase === 'lost' && st.lostUserId === userId) return; // until the user logs in again
    await this.create(userId);
  }

  async wantedUser() {
    if (this.st.loggedOut) return null;
    const key = this.key('intent');
    const intent = (await this.area('local').get(key))[key];
    if (intent?.userId) return intent.userId;
    const settings = await this.settings();
    if (settings?.autoLogin === true && settings.userId) return settings.userId;
    return null;
  }

  async settings() {
    try {
      return (await this.getSettings()) ?? null;
    } catch (err) {
      this.setPhase('error', { message: `Settings could not be read: ${err?.message ?? err}` });
      return null;
    }
  }

  async create(userId) {
    const st = this.st;
    const settings = await this.settings();
    const missing = ['apiBaseUrl', 'licenseKey', 'feature'].filter((k) => !settings?.[k]);
    if (missing.length) {
      this.setPhase('error', { message: `Not configured: ${missing.join(', ')} missing` });
      this.emit('error', { message: st.message });
      return;
    }
    st.userId = userId;
    // One idempotency key per attempt, kept (in storage.session) across its retries.
    if (!st.attempt || st.attempt.userId !== userId) {
      st.attempt = { idempotencyKey: `ik-${this.newId()}`, userId, startedAt: this.now() };
      await this.save();
    }
    if (!['unavailable', 'limit-reached'].includes(st.phase)) this.setPhase('connecting');
    const deviceKey = this.key('deviceId');
    const deviceId = (await this.area('local').get(deviceKey))[deviceKey];
    const apiBaseUrl = trimBase(settings.apiBaseUrl);
    const res = await this.request(apiBaseUrl + SESSION_PATH, {
      auth: settings.licenseKey,
      body: {
        userId,
        feature: settings.feature,
        deviceId,
        idempotencyKey: st.attempt.idempotencyKey,
        metadata: this.sessionMetadata(settings),
      },
    });
    const d = res.data;
    if ((res.status === 200 || res.status === 201) && d?.sessionToken) {
      const now = this.now();
      const interval = positive(d.heartbeatIntervalSeconds, 30);
      st.session = {
        token: d.sessionToken,
        sessionId: d.sessionId,
        userId,
        feature: settings.feature,
        apiBaseUrl,
        expiresAt: parseTime(d.expiresAt, now + positive(d.leaseTtlSeconds, 90) * 1000),
        heartbeatIntervalSeconds: interval,
        leaseTtlSeconds: positive(d.leaseTtlSeconds, interval * 3),
      };
      st.interval = interval;
      st.leaseEndsAt = st.session.expiresAt;
      st.attempt = null;
      st.failures = 0;
      st.outageNotified = false;
      st.lostUserId = null;
      // The copy that survives a browser restart, so that the next start can give it back.
      await this.area('local').set({
        [this.key('session')]: { token: d.sessionToken, sessionId: d.sessionId, apiBaseUrl, userId, feature: settings.feature },
      });
      this.setPhase('active', { reason: null, message: null });
      await this.schedule(now + interval * 1000);
      this.emit('session-started', {
        sessionId: d.sessionId,
        userId,
        feature: settings.feature,
        expiresAt: d.expiresAt,
        replayed: res.status === 200,
        replacedSessionId: d.replacedSessionId ?? null,
      });
      return;
    }
    if (res.status === 409) {
      const err = d?.error ?? {};
      const retryAfter = positive(err.retryAfterSeconds ?? res.retryAfter, 30);
      const retryAt = this.now() + retryAfter * 1000;
      st.attempt = null; // refused: the next try is a new attempt
      st.failures = 0;
      this.setPhase('limit-reached', {
        message: err.message || 'Maximum user limit reached',
        retryAfterSeconds: retryAfter,
        retryAt,
        limit: err.limit ?? null,
        active: err.active ?? null,
        scope: err.scope ?? null,
      });
      // Try again once the soonest lease can have run out, spread so waiters do not arrive together.
      await this.schedule(retryAt + Math.round(this.random() * Math.min(retryAfter, 10) * 500));
      this.emit('limit-reached', {
        message: st.message,
        retryAfterSeconds: retryAfter,
        retryAt: new Date(retryAt).toISOString(),
        limit: st.limit,
        active: st.active,
        scope: st.scope,
      });
      return;
    }
    if (isRetryable(res.status)) {
      await this.backOff(res);
      return;
    }
    // 400, 401, 403, 404: the settings or the license are wrong; retrying will not help.
    st.attempt = null;
    this.setPhase('error', { message: d?.error?.message ?? `The service answered ${res.status}`, code: d?.error?.code ?? null });
    await this.clearAlarm();
    st.nextAt = null;
    this.emit('error', { status: res.status, code: st.code, message: st.message });
  }

  async heartbeat() {
    const st = this.st;
    const s = st.session;
    const res = await this.request(s.apiBaseUrl + HEARTBEAT_PATH, { auth: s.token });
    const d = res.data;
    if (res.status === 200 && d) {
      const now = this.now();
      const interval = positive(d.heartbeatIntervalSeconds, s.heartbeatIntervalSeconds);
      s.expiresAt = parseTime(d.expiresAt, now + s.leaseTtlSeconds * 1000);
      s.heartbeatIntervalSeconds = interval;
      st.interval = interval;
      st.leaseEndsAt = s.expiresAt;
      st.failures = 0;
      const recovered = st.phase !== 'active';
      st.outageNotified = false;
      this.setPhase('active', { reason: null, message: null });
      await this.schedule(now + interval * 1000);
      this.emit('session-renewed', { sessionId: s.sessionId, expiresAt: d.expiresAt, resurrected: d.resurrected === true });
      if (recovered) this.emit('session-started', { sessionId: s.sessionId, userId: s.userId, feature: s.feature, expiresAt: d.expiresAt, resumed: true });
      return;
    }
    if (res.status === 410 || res.status === 401) {
      const reason = res.status === 401 ? 'unknown_token' : d?.error?.reason ?? 'expired';
      await this.dropSession();
      if (res.status === 401 || RENEWABLE_REASONS.has(reason)) {
        // The lease ran out (the browser slept, the service was down) or the token is unknown (the
        // service lost it): take a new seat by itself.
        this.emit('session-lost', { sessionId: s.sessionId, reason, renewing: true });
        await this.ensure();
        return;
      }
      // replaced, evicted, revoked, force_ended: someone decided; tell the user, do not fight it.
      st.lostUserId = s.userId;
      st.attempt = null;
      await this.clearAlarm();
      st.nextAt = null;
      this.setPhase('lost', { reason, message: lostMessage(reason) });
      this.emit('session-lost', { sessionId: s.sessionId, reason, renewing: false, message: st.message });
      return;
    }
    if (isRetryable(res.status)) {
      await this.backOff(res);
      return;
    }
    // Anything else (400, 403, 404): this session cannot be renewed; start afresh.
    await this.dropSession();
    this.emit('session-lost', { sessionId: s.sessionId, reason: `status_${res.status}`, renewing: true });
    await this.ensure();
  }

  /** Retry on an alarm after a jittered, growing delay; tell the UI once the lease could have run out. */
  async backOff(res) {
    const st = this.st;
    st.failures = (st.failures ?? 0) + 1;
    const now = this.now();
    const interval = st.session?.heartbeatIntervalSeconds ?? st.interval ?? 30;
    const capMs = Math.min(this.maxBackoffSeconds, Math.max(2, interval * 2)) * 1000;
    const baseMs = Math.min(capMs, 1000 * 2 ** Math.min(st.failures - 1, 16));
    let delay = baseMs / 2 + (this.random() * baseMs) / 2;
    if (res.retryAfter) delay = Math.max(delay, Math.min(res.retryAfter * 1000, this.maxBackoffSeconds * 1000));
    delay = Math.round(delay);
    st.lastError = res.status === 0 ? `network: ${res.error}` : `status ${res.status}`;
    await this.schedule(now + delay);
    if (!st.outageNotified && (st.leaseEndsAt == null || now >= st.leaseEndsAt)) {
      st.outageNotified = true;
      st.outageSince = now;
      this.setPhase('unavailable', { message: 'The seat service cannot be reached; retrying' });
      this.emit('unavailable', { since: new Date(now).toISOString(), error: st.lastError, nextTryAt: new Date(now + delay).toISOString() });
    } else if (st.phase === 'unavailable') {
      this.setPhase('unavailable');
    }
  }

  async dropSession() {
    this.st.session = null;
    await this.area('local').remove(this.key('session'));
  }

  /** Gives the seat back (keepalive, so it goes out even when the page or browser is closing). */
  async releaseSession(why) {
    const s = this.st.session;
    if (!s) return;
    const sent = this.postCleanup(s, true);
    this.st.session = null;
    await this.clearAlarm();
    this.st.nextAt = null;
    await this.area('local').remove(this.key('session'));
    const res = await sent;
    this.emit('session-ended', { why, sessionId: s.sessionId, released: res.data?.ended === true, status: res.status });
  }

  postCleanup(s, keepalive) {
    // A CORS-simple request (text/plain, token in the body): a keepalive fetch needs no preflight.
    return this.request(s.apiBaseUrl + CLEANUP_PATH, {
      body: { sessionToken: s.token },
      keepalive,
      contentType: 'text/plain;charset=UTF-8',
    });
  }

  sessionMetadata(settings) {
    const m = { client: `seatkeeper-extension/${VERSION}`, ...this.metadata, ...(settings.metadata ?? {}) };
    try {
      m.extensionId = this.chrome.runtime.id;
      m.extensionVersion = this.chrome.runtime.getManifest?.().version;
    } catch {
      /* not in an extension */
    }
    const out = {};
    for (const [k, v] of Object.entries(m).slice(0, 16)) if (v != null) out[k] = String(v);
    return out;
  }

  // ---- plumbing --------------------------------------------------------------------------------

  async request(url, { auth, body, keepalive = false, contentType = 'application/json' }) {
    const headers = { 'Content-Type': contentType };
    if (auth) headers.Authorization = `Bearer ${auth}`;
    const init = { method: 'POST', headers, body: JSON.stringify(body ?? {}), keepalive, cache: 'no-store' };
    if (!keepalive && typeof AbortSignal !== 'undefined' && AbortSignal.timeout) {
      init.signal = AbortSignal.timeout(this.requestTimeoutMs);
    }
    let res;
    try {
      res = await this.fetch(url, init);
    } catch (err) {
      return { status: 0, data: null, retryAfter: null, error: String(err?.message ?? err) };
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    const ra = Number.parseInt(res.headers?.get?.('Retry-After') ?? '', 10);
    return { status: res.status, data, retryAfter: Number.isFinite(ra) && ra >= 0 ? ra : null };
  }

  async schedule(at) {
    this.st.nextAt = at;
    await this.setAlarm(at);
  }

  async setAlarm(when) {
    await this.chrome.alarms.create(this.alarmName, { when });
  }

  async clearAlarm() {
    await this.chrome.alarms.clear(this.alarmName);
  }

  area(name) {
    return this.chrome.storage[name];
  }

  key(name) {
    return this.prefix + name;
  }

  setPhase(phase, extra = {}) {
    const st = this.st;
    const changed = st.phase !== phase;
    st.phase = phase;
    if (changed) {
      st.since = this.now();
      if (phase !== 'limit-reached') Object.assign(st, { retryAt: null, retryAfterSeconds: null, limit: null, active: null, scope: null });
      if (phase !== 'lost') st.reason = null;
      if (phase !== 'error') st.code = null;
      st.message = null;
    }
    Object.assign(st, extra);
  }

  publicStatus() {
    const st = this.st;
    const s = st.session;
    const iso = (t) => (t == null ? null : new Date(t).toISOString());
    return {
      state: st.phase,
      userId: s?.userId ?? (st.phase === 'signed-out' ? null : st.userId ?? st.lostUserId ?? null),
      feature: s?.feature ?? null,
      sessionId: s?.sessionId ?? null,
      expiresAt: iso(s?.expiresAt),
      since: iso(st.since),
      reason: st.reason ?? null,
      message: st.message ?? null,
      code: st.code ?? null,
      retryAt: iso(st.retryAt),
      retryAfterSeconds: st.retryAfterSeconds ?? null,
      limit: st.limit ?? null,
      active: st.active ?? null,
      nextTryAt: iso(st.nextAt),
      lastError: st.lastError ?? null,
      workerStarts: st.workerStarts ?? 0,
      leftoverRelease: st.leftoverRelease ?? null,
    };
  }

  async save() {
    const status = this.publicStatus();
    await this.area('session').set({ [this.key('state')]: this.st, [this.key('status')]: status });
    this.emit('status', status);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(detail);
      } catch {
        /* a listener's error is its own */
      }
    }
  }
}

function freshState() {
  return {
    phase: 'starting',
    since: null,
    session: null,
    attempt: null,
    failures: 0,
    nextAt: null,
    parked: false,
    loggedOut: false,
    leaseEndsAt: null,
    outageNotified: false,
    interval: null,
    lostUserId: null,
    pageTabs: [],
  };
}

function lostMessage(reason) {
  switch (reason) {
    case 'replaced':
      return 'This seat was taken over by a newer login on this device';
    case 'evicted':
      return 'The seat was given to another user (idle sessions are evicted at the limit)';
    case 'revoked':
      return 'The license or feature was removed';
    case 'force_ended':
      return 'An administrator ended this session';
    default:
      return `The session ended (${reason})`;
  }
}

function trimBase(url) {
  return String(url).replace(/\/+$/, '');
}

function positive(v, fallback) {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

function parseTime(s, fallback) {
  const t = Date.parse(s);
  return Number.isFinite(t) ? t : fallback;
}
