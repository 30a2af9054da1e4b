// The app page: the seat's status, a login form and a logout button. The service worker does the
// work; this page tells it that it is open, and shows what the worker keeps in storage.session.
const $ = (id) => document.getElementById(id);
const STATUS_KEY = 'seatkeeper.status';

const LABELS = {
  starting: 'Starting…',
  connecting: 'Taking a seat…',
  active: 'Seat taken',
  'limit-reached': 'Maximum user limit reached',
  unavailable: 'Seat service unreachable; retrying',
  lost: 'Session ended',
  paused: 'Seat given back',
  'signed-out': 'Not logged in',
  error: 'Cannot take a seat',
};

function send(op, extra = {}) {
  return chrome.runtime.sendMessage({ type: 'seatkeeper', op, ...extra });
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : '';
}

function render(st) {
  if (!st) return;
  const state = $('state');
  state.dataset.state = st.state;
  state.textContent = LABELS[st.state] ?? st.state;
  const msg = $('message');
  msg.dataset.retryAt = st.retryAt ?? '';
  if (st.state === 'limit-reached') {
    msg.textContent = `${st.message ?? 'Maximum user limit reached'}. A seat may free up in ${st.retryAfterSeconds} s (at ${time(st.retryAt)}); retrying by itself.`;
  } else if (st.state === 'unavailable') {
    msg.textContent = `Next try at ${time(st.nextTryAt)}${st.lastError ? ` (${st.lastError})` : ''}.`;
  } else {
    msg.textContent = st.message ?? '';
  }
  const rows = [
    ['User', st.userId],
    ['Session', st.sessionId, 'session-id'],
    ['Lease until', time(st.expiresAt)],
  ].filter(([, v]) => v);
  $('details').replaceChildren(
    ...rows.flatMap(([k, v, id]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      if (id) dd.id = id;
      return [dt, dd];
    }),
  );
  const loggedOut = ['signed-out', 'lost', 'error'].includes(st.state);
  $('login').hidden = !loggedOut;
  $('logout').hidden = loggedOut || st.state === 'starting';
}

chrome.storage.onChanged.addListener((changes, area) => {
  if (area === 'session' && changes[STATUS_KEY]) render(changes[STATUS_KEY].newValue);
});

$('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const { status } = await send('login', { userId: $('userId').value });
  render(status);
});

$('logout').addEventListener('click', async () => {
  const { status } = await send('logout');
  render(status);
});

const opened = await send('open');
const s = opened.settings;
$('config').textContent = s.feature
  ? `Feature ${s.feature} at ${s.apiBaseUrl}${s.source?.licenseKey === 'policy' ? ' (set by policy)' : ''}`
  : 'Not configured: set apiBaseUrl, licenseKey and feature in config.json or by policy.';
if (s.userId) $('userId').value = s.userId;
render(opened.status);
