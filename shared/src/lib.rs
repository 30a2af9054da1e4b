//! seatkeeper's core: concurrent-session ("seat") limits as leases. One folder per layer, each
//! depending only on the ones above it in this list:
//!
//! - [`domain`]: identifiers, policies, end reasons and the errors in domain terms (pure logic);
//!   [`token`]: license keys and session tokens; [`config`]: the environment's settings.
//! - [`seats`]: the seat store on Redis, the authority on seats: one Lua script per operation
//!   (`seats/lua/`), Redis's clock, one hash slot per license and feature.
//! - [`ledger`]: the durable history behind the `Ledger` trait, one room per backend
//!   (`ledger/sql.rs`: SQLite, PostgreSQL, MySQL/MariaDB; `ledger/dynamo.rs`: DynamoDB).
//! - [`webhooks`]: Standard Webhooks, queued in Redis from the outbox's drain and sent with
//!   retries.
//! - [`service`]: the operations in domain terms (create, heartbeat, end, policies), with its
//!   license cache and the outbox that carries history from Redis into the ledger.
//! - [`ops`]: housekeeping and the operator's views over the service: the sweep, the admin views.
//! - [`http`]: the route table and the contract's request and response shapes; the only layer that
//!   knows HTTP.
//! - [`telemetry`]: logging setup for the binaries; [`metrics`]: the process's Prometheus
//!   registry, which any room may count into.

pub mod config;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod ops;
pub mod seats;
pub mod service;
pub mod telemetry;
pub mod token;
pub mod webhooks;

pub use config::Config;
pub use domain::error;
pub use error::{Error, Result};
pub use service::Service;

/// The request and body types the handlers take, re-exported so runners need no lambda_http of their own.
pub mod lambda_body {
    pub use lambda_http::{Body, Request, Response};
}
