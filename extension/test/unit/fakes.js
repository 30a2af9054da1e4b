// A fake `chrome` namespace and a fake seatkeeper service for the unit tests. Time is a number the
// test moves (clock.t); alarms fire only when the test advances the clock; the service answers like
// the real one (seats, leases, idempotency, takeover, 409/410/401) or fails as the test tells it.

import { SeatClient } from '../../seatkeeper.js';

export const EXT_ID = 'abcdefghijklmnopabcdefghijklmnop';

function event() {
  const fns = [];
  return {
    fns,
    addListener: (f) => fns.push(f),
    removeListener: (f) => fns.splice(fns.indexOf(f) >>> 0, 1),
    fire: (...args) => fns.map((f) => f(...args)),
  };
}

function storageArea() {
  let data = {};
  const pick = (keys) => {
    if (keys == null) return structuredClone(data);
    const list = typeof keys === 'string' ? [keys] : Array.isArray(keys) ? keys : Object.keys(keys);
    const out = {};
    for (const k of list) if (k in data) out[k] = structuredClone(data[k]);
    return out;
  };
  return {
    get data() {
      return data;
    },
    get: async (keys) => pick(keys),
    set: async (obj) => {
      data = { ...data, ...structuredClone(obj) };
    },
    remove: async (keys) => {
      for (const k of typeof keys === 'string' ? [keys] : keys) delete data[k];
    },
    clear: async () => {
      data = {};
    },
  };
}

/** One browser profile: storage.local lives across browser restarts, the rest does not. */
export class FakeBrowser {
  constructor(clock) {
    this.clock = clock;
    this.local = storageArea();
    this.startBrowser();
  }

  /** A browser start: storage.session and alarms are new, pages are closed. */
  startBrowser() {
    this.session = storageArea();
    this.managed = storageArea();
    this.alarms = new Map();
    this.contexts = []; // {contextType, tabId}
    this.tabs = []; // {id, url}
    this.newWorker();
  }

  /** A worker start: listeners are registered again; storage and alarms stay. */
  newWorker() {
    const alarms = this.alarms;
    this.chrome = {
      runtime: {
        id: EXT_ID,
        getURL: (p) => `chrome-extension://${EXT_ID}/${p}`,
        getManifest: () => ({ version: '9.9.9' }),
        onStartup: event(),
        onInstalled: event(),
        getContexts: async ({ contextTypes }) => this.contexts.filter((c) => contextTypes.includes(c.contextType)),
      },
      storage: { local: this.local, session: this.session, managed: this.managed },
      alarms: {
        create: async (name, info) => {
          alarms.set(name, { name, scheduledTime: info.when });
        },
        clear: async (name) => alarms.delete(name),
        get: async (name) => alarms.get(name),
        onAlarm: event(),
      },
      tabs: {
        onRemoved: event(),
        onCreated: event(),
        onUpdated: event(),
        query: async () => this.tabs.map((t) => ({ ...t })),
      },
    };
    return this.chrome;
  }

  openPage(tabId) {
    this.contexts.push({ contextType: 'TAB', tabId, documentUrl: `chrome-extension://${EXT_ID}/app.html` });
  }

  /** Closes a page and dispatches tabs.onRemoved, as the browser does. */
  closePage(tabId) {
    this.contexts = this.contexts.filter((c) => c.tabId !== tabId);
    this.chrome.tabs.onRemoved.fire(tabId, { windowId: 1, isWindowClosing: false });
  }

  alarmAt(name = 'seatkeeper') {
    return this.alarms.get(name)?.scheduledTime ?? null;
  }
}

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

/** A seatkeeper service in memory, following API.md, with failure switches. */
export class FakeService {
  constructor(clock, { limit = 1, leaseTtlSeconds = 90, heartbeatIntervalSeconds = 30, key = 'lic-key' } = {}) {
    Object.assign(this, { clock, limit, leaseTtlSeconds, heartbeatIntervalSeconds, key });
    this.calls = [];
    this.sessions = new Map(); // token -> session
    this.idem = new Map();
    this.down = false; // network error
    this.unavailable = false; // 503
    this.next = []; // scripted responses, taken first: () => Response
    this.n = 0;
    this.fetch = (url, init) => this.handle(url, init);
  }

  live() {
    return [...this.sessions.values()].filter((s) => s.status === 'active' && s.expiresAt > this.clock.t);
  }

  callsTo(path) {
    return this.calls.filter((c) => c.path.endsWith(path));
  }

  async handle(url, init) {
    const u = new URL(url);
    const body = JSON.parse(init.body || '{}');
    const auth = init.headers?.Authorization?.replace(/^Bearer /, '') ?? null;
    this.calls.push({ path: u.pathname, body, auth, init, at: this.clock.t });
    if (this.down) throw new TypeError('fetch failed');
    if (this.next.length) return this.next.shift()();
    if (this.unavailable) return json(503, { error: { code: 'store_unavailable', message: 'Service unavailable' } }, { 'Retry-After': '2' });
    const now = this.clock.t;
    for (const s of this.sessions.values()) if (s.status === 'active' && s.expiresAt <= now) s.status = 'expired';
    if (u.pathname === '/api/licenses/sessions') {
      if (auth !== this.key) return json(401, { error: { code: 'unauthorized', message: 'Unknown license key' } });
      const replay = this.idem.get(body.idempotencyKey);
      if (replay && replay.status === 'active') return json(200, this.view(replay));
      const same = this.live().find((s) => body.deviceId && s.userId === body.userId && s.deviceId === body.deviceId);
      if (!same && this.live().length >= this.limit) {
        const soonest = Math.min(...this.live().map((s) => s.expiresAt));
        const ra = Math.ceil((soonest - now) / 1000);
        return json(409, { error: { code: 'seat_limit_reached', message: 'Maximum user limit reached', limit: this.limit, active: this.live().length, retryAfterSeconds: ra, scope: 'license' } }, { 'Retry-After': String(ra) });
      }
      if (same) same.status = 'replaced';
      const s = {
        id: `s${++this.n}`,
        token: `tok${this.n}`,
        userId: body.userId,
        deviceId: body.deviceId,
        status: 'active',
        expiresAt: now + this.leaseTtlSeconds * 1000,
        metadata: body.metadata,
      };
      this.sessions.set(s.token, s);
      if (body.idempotencyKey) this.idem.set(body.idempotencyKey, s);
      return json(201, { ...this.view(s), replacedSessionId: same?.id });
    }
    const token = auth ?? body.sessionToken;
    const s = this.sessions.get(token);
    if (!s) return json(401, { error: { code: 'unauthorized', message: 'Unknown session token' } });
    if (u.pathname.endsWith('/heartbeat')) {
      if (s.status !== 'active') return json(410, { error: { code: 'session_expired', message: 'Session is over', reason: s.status } });
      s.expiresAt = now + this.leaseTtlSeconds * 1000;
      return json(200, { sessionId: s.id, expiresAt: new Date(s.expiresAt).toISOString(), heartbeatIntervalSeconds: this.heartbeatIntervalSeconds, resurrected: false });
    }
    if (u.pathname.endsWith('/cleanup')) {
      if (s.status !== 'active') return json(200, { ended: false, reason: s.status });
      s.status = 'ended';
      return json(200, { ended: true });
    }
    return json(404, { error: { code: 'not_found', message: 'no route' } });
  }

  view(s) {
    return {
      sessionToken: s.token,
      sessionId: s.id,
      userId: s.userId,
      deviceId: s.deviceId,
      expiresAt: new Date(s.expiresAt).toISOString(),
      heartbeatIntervalSeconds: this.heartbeatIntervalSeconds,
      leaseTtlSeconds: this.leaseTtlSeconds,
      seats: { limit: this.limit, active: this.live().length },
    };
  }
}

/** A test world: a clock, one browser profile, one service, and helpers to run the client. */
export function world(opts = {}) {
  const clock = { t: Date.UTC(2026, 0, 1) };
  const browser = new FakeBrowser(clock);
  const service = new FakeService(clock, opts.service);
  const w = {
    clock,
    browser,
    service,
    settings: {
      apiBaseUrl: 'http://127.0.0.1:9/',
      licenseKey: 'lic-key',
      feature: 'f',
      ...(opts.settings ?? {}),
    },
    randomValue: 0.5,
    events: [],
    client: null,
    ids: 0,
    /** Starts a worker (after newWorker or startBrowser) with a client, as the service worker does. */
    async start() {
      const client = new SeatClient({
        chrome: browser.chrome,
        fetch: service.fetch,
        now: () => clock.t,
        random: () => w.randomValue,
        newId: () => `id${++w.ids}`,
        getSettings: async () => w.settings,
        track: opts.track,
      });
      for (const type of ['session-started', 'session-renewed', 'session-lost', 'session-ended', 'limit-reached', 'unavailable', 'error']) {
        client.on(type, (d) => w.events.push({ type, ...d }));
      }
      w.client = client;
      await client.ready;
      return client;
    },
    /** Waits until every queued operation has run. */
    async settle() {
      for (let i = 0; i < 5; i++) await w.client.run(async () => {});
    },
    /** Moves time forward by ms, firing the alarm whenever it falls due, as often as it does. */
    async advance(ms) {
      const end = clock.t + ms;
      for (let guard = 0; guard < 1000; guard++) {
        const due = browser.alarmAt();
        if (due == null || due > end) break;
        clock.t = Math.max(clock.t, due);
        browser.alarms.delete('seatkeeper');
        browser.chrome.alarms.onAlarm.fire({ name: 'seatkeeper', scheduledTime: due });
        await w.settle();
      }
      clock.t = end;
    },
    eventsOf(type) {
      return w.events.filter((e) => e.type === type);
    },
    async status() {
      return (await browser.session.get('seatkeeper.status'))['seatkeeper.status'];
    },
  };
  return w;
}
