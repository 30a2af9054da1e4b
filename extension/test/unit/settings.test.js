import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { loadSettings, SETTING_KEYS } from '../../reference/settings.js';

function env({ managed, config, managedFails = false, managedNever = false }) {
  return {
    chrome: {
      runtime: { getURL: (p) => `chrome-extension://x/${p}` },
      storage: {
        managed: {
          get: () => (managedNever ? new Promise(() => {}) : managedFails ? Promise.reject(new Error('no policy')) : Promise.resolve(managed ?? {})),
        },
      },
    },
    fetch: async (url) => {
      assert.equal(url, 'chrome-extension://x/config.json');
      if (!config) return new Response('', { status: 404 });
      return new Response(JSON.stringify(config), { status: 200 });
    },
  };
}

test('config.json alone is enough', async () => {
  const e = env({ config: { apiBaseUrl: 'http://a', licenseKey: 'k', feature: 'f', userId: 'u', autoLogin: true } });
  const s = await loadSettings(e.chrome, { fetch: e.fetch });
  assert.deepEqual({ ...s, source: undefined }, { apiBaseUrl: 'http://a', licenseKey: 'k', feature: 'f', userId: 'u', autoLogin: true, source: undefined });
  assert.equal(s.source.licenseKey, 'config.json');
});

test('a key set by policy wins over config.json, key by key', async () => {
  const e = env({ managed: { licenseKey: 'policy-key', autoLogin: false }, config: { apiBaseUrl: 'http://a', licenseKey: 'k', feature: 'f', autoLogin: true } });
  const s = await loadSettings(e.chrome, { fetch: e.fetch });
  assert.equal(s.licenseKey, 'policy-key');
  assert.equal(s.autoLogin, false);
  assert.equal(s.apiBaseUrl, 'http://a');
  assert.deepEqual(s.source, { apiBaseUrl: 'config.json', licenseKey: 'policy', feature: 'config.json', autoLogin: 'policy' });
});

test('no managed storage, or one that never answers: config.json', async () => {
  for (const opts of [{ managedFails: true }, { managedNever: true }]) {
    const e = env({ ...opts, config: { feature: 'f' } });
    const s = await loadSettings(e.chrome, { fetch: e.fetch, managedTimeoutMs: 20 });
    assert.equal(s.feature, 'f');
  }
});

test('the managed-storage schema declares every setting', async () => {
  const schema = JSON.parse(await readFile(new URL('../../reference/managed_schema.json', import.meta.url), 'utf8'));
  assert.deepEqual(Object.keys(schema.properties).sort(), [...SETTING_KEYS].sort());
  const manifest = JSON.parse(await readFile(new URL('../../reference/manifest.json', import.meta.url), 'utf8'));
  assert.equal(manifest.storage.managed_schema, 'managed_schema.json');
  assert.equal(manifest.manifest_version, 3);
});
