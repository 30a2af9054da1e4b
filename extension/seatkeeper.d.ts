// Types of seatkeeper.js, the seatkeeper session client for Manifest V3 extensions.

export declare const VERSION: string;

/** Deployment settings, read at every session create. */
export interface SeatSettings {
  /** Base URL of the seatkeeper API, e.g. "https://seats.example.com". */
  apiBaseUrl?: string;
  /** The license key (Bearer credential of a create). */
  licenseKey?: string;
  /** The feature whose seats are taken. */
  feature?: string;
  /** With autoLogin: the user a seat is taken for at worker start with no login. */
  userId?: string;
  autoLogin?: boolean;
  /** Extra session metadata (strings; at most 16 entries in all). */
  metadata?: Record<string, string>;
}

/** Which pages hold the seat: when the last one closes, the seat is given back. */
export type SeatTracking =
  /** The extension's own tabs, popups and side panels (runtime.getContexts). The default. */
  | 'extension'
  /** Any browser tab: the seat goes when the browser's last tab closes. Needs no permission. */
  | 'all'
  /** Tabs whose URL matches these patterns (needs the "tabs" or matching host permissions). */
  | string[]
  /** Never released on tab close; only logout, leftover release at start, or the lease. */
  | 'none';

export interface SeatClientOptions {
  /** Async source of the settings; called at every create (and at start for autoLogin). */
  getSettings: () => SeatSettings | null | Promise<SeatSettings | null>;
  track?: SeatTracking;
  /** Name of the heartbeat alarm (default "seatkeeper"). */
  alarmName?: string;
  /** Prefix of the storage keys (default "seatkeeper."). */
  storagePrefix?: string;
  /** Time limit of one request (default 10000 ms). */
  requestTimeoutMs?: number;
  /** Longest back-off between retries (default 60 s; it is also at most twice the heartbeat interval). */
  maxBackoffSeconds?: number;
  /** Metadata sent with every create. */
  metadata?: Record<string, string>;
  /** For tests: the chrome namespace, fetch, clock, randomness and id source. */
  chrome?: any;
  fetch?: (url: string, init: RequestInit) => Promise<Response>;
  now?: () => number;
  random?: () => number;
  newId?: () => string;
}

export type SeatState =
  | 'starting'
  | 'signed-out'
  | 'connecting'
  | 'active'
  | 'limit-reached'
  | 'unavailable'
  | 'lost'
  | 'paused'
  | 'error';

/** What the UI shows; kept in storage.session under "<prefix>status" too. Times are ISO strings. */
export interface SeatStatus {
  state: SeatState;
  userId: string | null;
  feature: string | null;
  sessionId: string | null;
  expiresAt: string | null;
  since: string | null;
  /** For "lost": replaced, evicted, revoked or force_ended. */
  reason: string | null;
  message: string | null;
  /** For "error": the service's error code, if any. */
  code: string | null;
  /** For "limit-reached": when a seat may free up, per the service. */
  retryAt: string | null;
  retryAfterSeconds: number | null;
  limit: number | null;
  active: number | null;
  /** When the next heartbeat or retry is due. */
  nextTryAt: string | null;
  lastError: string | null;
  /** Worker starts in this browser session. */
  workerStarts: number;
  /** What happened to a session left by the previous browser run, released at start. */
  leftoverRelease: { sessionId: string; status: number; ended: boolean | null } | null;
}

export interface SeatEvents {
  status: SeatStatus;
  'session-started': { sessionId: string; userId: string; feature: string; expiresAt: string; replayed?: boolean; resumed?: boolean; replacedSessionId?: string | null };
  'session-renewed': { sessionId: string; expiresAt: string; resurrected: boolean };
  'session-lost': { sessionId: string; reason: string; renewing: boolean; message?: string };
  'session-ended': { why: 'logout' | 'pages-closed' | 'leftover' | 'switch-user'; sessionId: string; released: boolean; status?: number };
  'limit-reached': { message: string; retryAfterSeconds: number; retryAt: string; limit: number | null; active: number | null; scope: string | null };
  unavailable: { since: string; error: string; nextTryAt: string };
  error: { message: string; status?: number; code?: string | null };
}

export declare class SeatClient {
  constructor(options: SeatClientOptions);
  /** Settles when the worker-start routine (leftover release, then a create if wanted) has run. */
  readonly ready: Promise<void>;
  on<K extends keyof SeatEvents>(type: K, fn: (detail: SeatEvents[K]) => void): () => void;
  status(): Promise<SeatStatus>;
  /** Remembers the user (storage.local) and takes a seat. */
  login(userId: string): Promise<SeatStatus>;
  /** Forgets the user and gives the seat back. */
  logout(): Promise<SeatStatus>;
  /** A page opened: take the seat again if it was given back when the last page closed. */
  resume(): Promise<SeatStatus>;
}

/** Creates and starts the client; call once, synchronously, at the service worker's top level. */
export declare function createSeatClient(options: SeatClientOptions): SeatClient;
