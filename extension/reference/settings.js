// Deployment settings: each key from chrome.storage.managed when an enterprise policy sets it, else
// from config.json beside manifest.json. Keys: apiBaseUrl, licenseKey, feature, userId, autoLogin.

export const SETTING_KEYS = ['apiBaseUrl', 'licenseKey', 'feature', 'userId', 'autoLogin'];

/**
 * @param {any} chrome the extension's chrome namespace
 * @param {{fetch?: typeof fetch, managedTimeoutMs?: number}} [options]
 * @returns {Promise<{apiBaseUrl?: string, licenseKey?: string, feature?: string, userId?: string,
 *   autoLogin?: boolean, source: Record<string, 'policy' | 'config.json'>}>}
 */
export async function loadSettings(chrome, options = {}) {
  const fetchImpl = options.fetch ?? ((u) => fetch(u));
  // storage.managed.get can take about 3 s at browser start: read both at once.
  const [managed, file] = await Promise.all([
    readManaged(chrome, options.managedTimeoutMs ?? 8000),
    readConfigFile(chrome, fetchImpl),
  ]);
  const out = { source: {} };
  for (const key of SETTING_KEYS) {
    if (managed[key] !== undefined && managed[key] !== '') {
      out[key] = managed[key];
      out.source[key] = 'policy';
    } else if (file[key] !== undefined && file[key] !== '') {
      out[key] = file[key];
      out.source[key] = 'config.json';
    }
  }
  return out;
}

async function readManaged(chrome, timeoutMs) {
  let timer;
  try {
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve({}), timeoutMs);
    });
    return (await Promise.race([chrome.storage.managed.get(null), timeout])) ?? {};
  } catch {
    return {}; // no policy, or no managed storage (an unpacked extension without a schema)
  } finally {
    clearTimeout(timer);
  }
}

async function readConfigFile(chrome, fetchImpl) {
  try {
    const res = await fetchImpl(chrome.runtime.getURL('config.json'));
    if (!res.ok) return {};
    const data = await res.json();
    return data && typeof data === 'object' ? data : {};
  } catch {
    return {};
  }
}
