-- MySQL/MariaDB: identifiers are ASCII and compared case-sensitively (ascii_bin).
-- Licenses and their feature policies. Keys are stored only as SHA-256 hashes.
CREATE TABLE licenses (
    license_id VARCHAR(128) NOT NULL PRIMARY KEY,
    key_hash VARCHAR(64) NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

CREATE TABLE license_features (
    license_id VARCHAR(128) NOT NULL,
    feature VARCHAR(128) NOT NULL,
    max_sessions BIGINT NOT NULL,
    max_sessions_per_user BIGINT,
    on_limit VARCHAR(16) NOT NULL,
    lease_ttl_seconds BIGINT NOT NULL,
    heartbeat_interval_seconds BIGINT NOT NULL,
    resurrect_window_seconds BIGINT NOT NULL,
    PRIMARY KEY (license_id, feature)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

-- One row a session; status is 'active' or the reason it ended. Times are Unix milliseconds.
CREATE TABLE sessions (
    session_id VARCHAR(32) NOT NULL PRIMARY KEY,
    license_id VARCHAR(128) NOT NULL,
    feature VARCHAR(128) NOT NULL,
    user_id VARCHAR(128) NOT NULL,
    device_id VARCHAR(128),
    token_hash VARCHAR(64) NOT NULL,
    idempotency_key VARCHAR(128),
    metadata TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    status VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL,
    last_heartbeat_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
-- Rebuild and reconciliation read a slot's active sessions; admin debug reads a user's.
CREATE INDEX sessions_slot_status ON sessions (license_id, feature, status);
CREATE INDEX sessions_user_feature ON sessions (user_id, feature, created_at);
-- Stats read what started or ended in a window.
CREATE INDEX sessions_license_created ON sessions (license_id, created_at);
CREATE INDEX sessions_license_ended ON sessions (license_id, ended_at);

-- Every state change with its time: created, each end reason, and refused creates.
CREATE TABLE session_events (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    license_id VARCHAR(128) NOT NULL,
    feature VARCHAR(128) NOT NULL,
    session_id VARCHAR(32),
    user_id VARCHAR(128) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
CREATE INDEX session_events_license_at ON session_events (license_id, at);
