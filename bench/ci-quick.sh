#!/usr/bin/env bash
# Runs the benchmarks in quick mode (small sizes, 1 s windows; well under a minute once built) so
# they never rot. No timing is asserted: a missed target prints MISS and still exits 0; only an
# error (a store that cannot be reached, an operation that failed) fails the run.
# Needs redis-server and PostgreSQL (started here through scripts/services.sh when it is there);
# the database URL is SEATKEEPER_BENCH_POSTGRES_URL, else SEATKEEPER_TEST_POSTGRES_URL. wrk is used
# when installed (apt-get install wrk), otherwise the built-in HTTP load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/services.sh ]; then
  . scripts/services.sh
  ensure_redis
  ensure_postgres
fi
if ! command -v wrk >/dev/null; then
  if [ -f scripts/services.sh ]; then _sk_apt_install wrk || true; fi
fi
cargo build --release --locked -p seatkeeper-bench -p seatkeeper-functions
out=$(mktemp)
trap 'rm -f "$out"' EXIT
./target/release/seatkeeper-bench --quick "$@" | tee "$out"
case "$(tail -n 1 "$out")" in
  '{"bench":"seatkeeper"'*) ;;
  *) echo "seatkeeper-bench: the last line is not the JSON summary" >&2; exit 1 ;;
esac
