// The seatkeeper console: the operator routes of the API, in a page the service serves itself.
// No framework and no build step; nothing from another origin (the Content-Security-Policy allows
// none). The admin token lives in this closure only: never in a URL, a cookie or storage.
'use strict';
(() => {
  const REFRESH_MS = 1500;
  const AT_RISK_INTERVALS = 1.5;
  let token = null;
  let scopedLicense = null;
  let current = null; // the license shown
  let policies = {}; // feature -> policy of the license shown
  let timer = null;
  const $ = (id) => document.getElementById(id);

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const err = new Error(data?.error?.message ?? `the service answered ${res.status}`);
      err.status = res.status;
      err.code = data?.error?.code;
      throw err;
    }
    return data;
  }

  function say(text, isError = false) {
    $('message').textContent = text;
    $('message').className = isError ? 'error' : '';
  }

  function fail(err) {
    if (err.status === 401) {
      signOut();
      say(`Signed out: ${err.message}`, true);
    } else {
      say(`${err.code ? err.code + ': ' : ''}${err.message}`, true);
    }
  }

  /** An element with text children (never HTML: every value is shown as text). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v;
      else if (k === 'data') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
    return node;
  }

  function seatMeter(active, limit) {
    return el('span', {}, el('meter', { min: 0, max: Math.max(limit, 1), value: active, high: limit * 0.9 }), ` ${active} / ${limit}`);
  }

  function ago(iso) {
    if (!iso) return '';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 90 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  }

  function show(view) {
    for (const id of ['sign-in', 'licenses', 'license']) $(id).hidden = id !== view;
    $('sign-out').hidden = view === 'sign-in';
  }

  function signOut() {
    token = null;
    scopedLicense = null;
    current = null;
    clearInterval(timer);
    timer = null;
    $('who').textContent = '';
    show('sign-in');
  }

  async function signIn(event) {
    event.preventDefault();
    token = $('token').value.trim();
    scopedLicense = $('scoped-license').value.trim() || null;
    $('token').value = '';
    say('');
    try {
      if (scopedLicense) {
        await openLicense(scopedLicense);
        $('who').textContent = `signed in for license ${scopedLicense}`;
      } else {
        await showLicenses();
        $('who').textContent = 'signed in as the service admin';
      }
    } catch (err) {
      if (err.status === 403 && !scopedLicense) say('This token is scoped to one license: give its id too.', true);
      else fail(err);
    }
  }

  async function showLicenses() {
    clearInterval(timer);
    current = null;
    const rows = [];
    let cursor = null;
    do {
      const page = await api('GET', `/api/licenses?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      for (const l of page.licenses) {
        for (const [feature, p] of Object.entries(l.features)) {
          rows.push(
            el(
              'tr',
              { data: { license: l.licenseId, feature } },
              el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => openLicense(l.licenseId).catch(fail) }, l.licenseId)),
              el('td', {}, feature),
              el('td', {}, seatMeter(p.active, p.maxSessions)),
              el('td', { class: 'hint' }, p.active >= p.maxSessions ? 'full' : ''),
            ),
          );
        }
      }
      cursor = page.nextCursor;
    } while (cursor);
    $('license-rows').replaceChildren(...rows);
    show('licenses');
  }

  async function openLicense(id) {
    const license = await api('GET', `/api/licenses/${encodeURIComponent(id)}`);
    current = id;
    policies = license.features;
    $('license-id').textContent = id;
    $('search').value = '';
    $('usage-feature').replaceChildren(...Object.keys(policies).map((f) => el('option', { value: f }, f)));
    show('license');
    await refresh();
    await drawUsage();
    clearInterval(timer);
    timer = setInterval(() => refresh().catch(fail), REFRESH_MS);
  }

  async function refresh() {
    if (!current) return;
    const id = current;
    const view = await api('GET', `/api/licenses/${encodeURIComponent(id)}/sessions`);
    if (current !== id) return;
    $('seat-bars').replaceChildren(
      ...Object.entries(view.features).map(([f, s]) => el('p', { data: { feature: f } }, `${f}: `, seatMeter(s.active, s.limit))),
    );
    const wanted = $('search').value.trim();
    const now = Date.parse(view.readAt) || Date.now();
    const rows = view.sessions
      .filter((s) => !wanted || s.userId.includes(wanted))
      .map((s) => {
        const interval = policies[s.feature]?.heartbeatIntervalSeconds ?? 30;
        const late = s.lastHeartbeatAt && now - Date.parse(s.lastHeartbeatAt) > AT_RISK_INTERVALS * interval * 1000;
        return el(
          'tr',
          { class: late ? 'at-risk' : '', data: { session: s.sessionId, user: s.userId } },
          el('td', {}, s.userId),
          el('td', {}, s.deviceId ?? ''),
          el('td', {}, s.feature),
          el('td', { title: s.createdAt ?? '' }, s.createdAt ? new Date(s.createdAt).toLocaleTimeString() : ''),
          el('td', { class: 'beat', title: s.lastHeartbeatAt ?? '' }, ago(s.lastHeartbeatAt)),
          el('td', {}, el('code', {}, s.sessionId)),
          el('td', {}, el('button', { type: 'button', class: 'end', onclick: () => endSession(s).catch(fail) }, 'End')),
        );
      });
    $('session-rows').replaceChildren(...rows);
    $('end-user').disabled = !wanted || !view.sessions.some((s) => s.userId === wanted);
  }

  async function endSession(s) {
    if (!confirm(`End ${s.userId}'s session on ${s.deviceId ?? 'an unnamed device'}? Its holder loses the seat at once.`)) return;
    const r = await api('DELETE', `/api/licenses/${encodeURIComponent(current)}/sessions/${encodeURIComponent(s.sessionId)}`);
    say(r.ended ? `Ended ${s.userId}'s session.` : `That session was already over (${r.reason}).`);
    await refresh();
  }

  async function endUser() {
    const user = $('search').value.trim();
    if (!user || !confirm(`End every session of ${user} on license ${current}?`)) return;
    let ended = 0;
    for (const feature of Object.keys(policies)) {
      try {
        const r = await api(
          'DELETE',
          `/api/licenses/sessions/force-cleanup/${encodeURIComponent(user)}/${encodeURIComponent(feature)}?licenseId=${encodeURIComponent(current)}`,
        );
        ended += r.ended;
      } catch (err) {
        if (err.status !== 404) throw err; // no sessions of that user for this feature
      }
    }
    say(`Ended ${ended} session(s) of ${user}.`);
    await refresh();
  }

  /** Peak live sessions per hour against the limit, and refusals, as an SVG bar chart. */
  async function drawUsage() {
    const feature = $('usage-feature').value;
    if (!current || !feature) return;
    const u = await api('GET', `/api/licenses/${encodeURIComponent(current)}/usage?feature=${encodeURIComponent(feature)}&stepSeconds=3600`);
    const limit = policies[feature]?.maxSessions ?? 0;
    const top = Math.max(limit, ...u.points.map((p) => Math.max(p.peakActive, p.limitRejections)), 1);
    const W = 24 * 20, H = 120;
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    const attrs = (node, a) => {
      for (const [k, v] of Object.entries(a)) node.setAttribute(k, v);
      return node;
    };
    attrs(svg, { viewBox: `0 0 ${W} ${H + 14}`, width: W, height: H + 14, role: 'img', 'aria-label': `usage of ${feature}` });
    const step = W / Math.max(u.points.length, 1);
    u.points.forEach((p, i) => {
      const h = (p.peakActive / top) * H;
      const bar = attrs(document.createElementNS(ns, 'rect'), { x: i * step + 1, y: H - h, width: step / 2 - 1, height: h, class: 'chart-peak' });
      bar.append(attrs(document.createElementNS(ns, 'title'), {}));
      bar.firstChild.textContent = `${p.at}: peak ${p.peakActive}, started ${p.started}, refused ${p.limitRejections}`;
      const r = (p.limitRejections / top) * H;
      const refused = attrs(document.createElementNS(ns, 'rect'), { x: i * step + step / 2, y: H - r, width: step / 2 - 1, height: r, class: 'chart-refused' });
      svg.append(bar, refused);
    });
    const y = H - (limit / top) * H;
    svg.append(attrs(document.createElementNS(ns, 'line'), { x1: 0, x2: W, y1: y, y2: y, class: 'chart-limit' }));
    const label = attrs(document.createElementNS(ns, 'text'), { x: 0, y: H + 12, class: 'chart-axis' });
    label.textContent = `limit ${limit} (dashed); blue: peak live sessions per hour; red: refusals`;
    svg.append(label);
    $('usage').replaceChildren(svg);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('refresh-seconds').textContent = String(REFRESH_MS / 1000);
    $('sign-in').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', signOut);
    $('back').addEventListener('click', () => (scopedLicense ? openLicense(scopedLicense) : showLicenses()).catch(fail));
    $('search').addEventListener('input', () => refresh().catch(fail));
    $('end-user').addEventListener('click', () => endUser().catch(fail));
    $('usage-feature').addEventListener('change', () => drawUsage().catch(fail));
    show('sign-in');
    document.body.dataset.ready = 'true';
  });
})();
