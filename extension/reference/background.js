// The reference extension's service worker: the seat client, settings, and the messages of app.html.
import { createSeatClient } from './lib/seatkeeper.js';
import { loadSettings } from './settings.js';

let settings = null;
const getSettings = () => (settings ??= loadSettings(chrome));
// A policy change applies to the next session taken.
chrome.storage.onChanged.addListener((_changes, area) => {
  if (area === 'managed') settings = null;
});

// At the top level, so its listeners are registered at every worker start. The seat is held while
// the browser runs (autoLogin) or once the user logs in, and given back when the last app tab closes.
const client = createSeatClient({ getSettings, track: 'extension' });

chrome.action.onClicked.addListener(() => {
  chrome.tabs.create({ url: chrome.runtime.getURL('app.html') });
});

chrome.runtime.onMessage.addListener((msg, sender, reply) => {
  if (sender.id !== chrome.runtime.id || msg?.type !== 'seatkeeper') return false;
  handle(msg).then(reply, (err) => reply({ error: String(err?.message ?? err) }));
  return true; // answers asynchronously
});

async function handle(msg) {
  switch (msg.op) {
    case 'open': {
      // An app page opened: take the seat again if it was given back when the last page closed.
      const status = await client.resume();
      const s = await getSettings();
      return {
        status,
        settings: { apiBaseUrl: s.apiBaseUrl ?? null, feature: s.feature ?? null, userId: s.userId ?? null, autoLogin: s.autoLogin === true, source: s.source },
      };
    }
    case 'login':
      return { status: await client.login(String(msg.userId ?? '').trim()) };
    case 'logout':
      return { status: await client.logout() };
    default:
      return { status: await client.status() };
  }
}
