# Redis memory per live session in one slot of N sessions, key by key, through the real runner:
#   cargo build --release -p seatkeeper-local && python3 bench/memory-breakdown.py 1000 [idem]
# Starts its own redis-server (port 6391) and runner (port 8391), SQLite ledger in a temp dir.
import json, os, subprocess, sys, time, urllib.request, concurrent.futures as cf, tempfile
SEATKEEPER = os.environ.get("SEATKEEPER_BIN", "target/release/seatkeeper")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
IDEM = len(sys.argv) > 2 and sys.argv[2] == "idem"
RPORT, HPORT = 6391, 8391
tmp = tempfile.mkdtemp()
rs = subprocess.Popen(["redis-server", "--port", str(RPORT), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
time.sleep(0.5)
env = dict(os.environ, SEATKEEPER_REDIS_URL=f"redis://127.0.0.1:{RPORT}", SEATKEEPER_LEDGER_URL=f"sqlite://{tmp}/l.db",
           SEATKEEPER_ADMIN_TOKEN="adm", RUST_LOG="warn")
subprocess.run([SEATKEEPER, "migrate"], env=env, check=True)
runner = subprocess.Popen([SEATKEEPER, "serve", "--listen", f"127.0.0.1:{HPORT}"], env=env)
def req(method, path, body, tok):
    r = urllib.request.Request(f"http://127.0.0.1:{HPORT}{path}", method=method, data=json.dumps(body).encode(),
                               headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    with urllib.request.urlopen(r) as resp:
        return json.load(resp)
def rc(*a):
    return subprocess.run(["redis-cli", "-p", str(RPORT), *a], capture_output=True, text=True).stdout.strip()
try:
    for _ in range(50):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{HPORT}/health"); break
        except Exception: time.sleep(0.1)
    lic = req("PUT", "/api/licenses/lic-mem", {"features": {"pro": {"maxSessions": N + 10}}}, "adm")
    key = lic.get("key")
    def used():
        rc("MEMORY", "PURGE")
        for line in rc("INFO", "memory").splitlines():
            if line.startswith("used_memory:"): return int(line.split(":")[1])
    req("POST", "/api/licenses/sessions", {"userId": "warm", "feature": "pro", "deviceId": "d"}, key)
    before = used()
    def one(i):
        b = {"userId": f"user-{i:06d}", "feature": "pro", "deviceId": f"device-{i:06d}"}
        if IDEM: b["idempotencyKey"] = f"idem-{i:012d}-abcdefgh"
        return req("POST", "/api/licenses/sessions", b, key)
    with cf.ThreadPoolExecutor(16) as ex:
        list(ex.map(one, range(N)))
    after = used()
    print(f"slot of {N + 1} sessions{' (with idempotency keys)' if IDEM else ''}: used_memory {(after - before) / N:.0f} B per session")
    for k in sorted(rc("--scan", "--pattern", "sk:*").split()):
        if k.startswith("sk:{lic-mem/pro}:i:"): continue
        print(f"  {k:32} {rc('OBJECT', 'ENCODING', k):10} {int(rc('MEMORY', 'USAGE', k, 'SAMPLES', '0')) / (N + 1):7.1f} B per session")
    idem = [k for k in rc("--scan", "--pattern", "sk:*:i:*").split()]
    if idem:
        print(f"  i:<key> x {len(idem)}: {sum(int(rc('MEMORY', 'USAGE', k)) for k in idem[:200]) / min(200, len(idem)):.1f} B each")
finally:
    runner.terminate(); rs.terminate()
