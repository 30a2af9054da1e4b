# Sourced by scripts/run and scripts/test: makes sure the services seatkeeper needs answer on
# loopback, installing them from Debian's packages when missing. Idempotent; prints what it does.

_sk_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_sk_wait_port() {
  for _ in $(seq 1 60); do _sk_port_open "$1" && return 0; sleep 0.5; done
  echo "services: nothing answers on 127.0.0.1:$1 after 30 s" >&2
  return 1
}

_sk_apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "services: $* missing; install it (apt-get install $*) or run as root" >&2
    return 1
  fi
  if [ -z "${_SK_APT_UPDATED:-}" ]; then
    echo "services: apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _SK_APT_UPDATED=1
  fi
  echo "services: installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Redis: the binary (tests start private servers) and one server on 6379 (the local runner's).
ensure_redis() {
  command -v redis-server >/dev/null || _sk_apt_install redis-server
  # jq: README.md's examples read keys and tokens from answers with it, and a test runs them.
  command -v jq >/dev/null || _sk_apt_install jq
  if ! _sk_port_open 6379; then
    echo "services: starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/seatkeeper-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/seatkeeper-redis --logfile /tmp/seatkeeper-redis/redis.log
    _sk_wait_port 6379
  fi
}

# PostgreSQL with a password login for the tests (harmless where auth is trust).
ensure_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    _sk_apt_install postgresql
  fi
  if ! _sk_port_open 5432; then
    echo "services: starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    _sk_wait_port 5432
  fi
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

# MariaDB with a TCP user for the tests (root may only log in through the socket).
ensure_mariadb() {
  if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
    _sk_apt_install mariadb-server
  fi
  if ! _sk_port_open 3306; then
    echo "services: starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    _sk_wait_port 3306
  fi
  mariadb -uroot -e "CREATE USER IF NOT EXISTS 'seatkeeper'@'127.0.0.1' IDENTIFIED BY 'seatkeeper';
    CREATE USER IF NOT EXISTS 'seatkeeper'@'localhost' IDENTIFIED BY 'seatkeeper';
    GRANT ALL PRIVILEGES ON *.* TO 'seatkeeper'@'127.0.0.1';
    GRANT ALL PRIVILEGES ON *.* TO 'seatkeeper'@'localhost';
    CREATE DATABASE IF NOT EXISTS test;"
}

# moto, the DynamoDB emulator the DynamoDB ledger's tests run on: installed from PyPI when
# missing, one server on 127.0.0.1:5055, exported as SEATKEEPER_TEST_DYNAMODB_URL. (Without that
# variable the test harness starts a moto server of its own per test binary.)
ensure_moto() {
  if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
    command -v python3 >/dev/null || _sk_apt_install python3 python3-pip
    echo "services: installing moto[server]"
    python3 -m pip install -q 'moto[server]' 2>/dev/null \
      || python3 -m pip install -q --break-system-packages 'moto[server]'
  fi
  if ! _sk_port_open 5055; then
    echo "services: starting moto on 127.0.0.1:5055"
    mkdir -p /tmp/seatkeeper-moto
    # One thread (as the test harness runs it, see MOTO_SINGLE_THREADED in tests/src/database.rs):
    # moto's threaded server fails TransactWriteItems now and then under concurrent writes.
    nohup python3 -c "import sys; from werkzeug.serving import run_simple; \
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app; \
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)" \
      5055 >/tmp/seatkeeper-moto/moto.log 2>&1 &
    _sk_wait_port 5055
  fi
  export SEATKEEPER_TEST_DYNAMODB_URL="${SEATKEEPER_TEST_DYNAMODB_URL:-http://127.0.0.1:5055}"
}

# standardwebhooks (PyPI, pinned): what tests/webhooks/receiver.py, the webhook tests' receiver,
# verifies signatures with, as a customer's receiver would.
ensure_standardwebhooks() {
  if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))' 2>/dev/null)" != "1.3.0" ]; then
    command -v python3 >/dev/null || _sk_apt_install python3 python3-pip
    echo "services: installing standardwebhooks 1.3.0"
    python3 -m pip install -q 'standardwebhooks==1.3.0' 2>/dev/null \
      || python3 -m pip install -q --break-system-packages 'standardwebhooks==1.3.0'
  fi
}
