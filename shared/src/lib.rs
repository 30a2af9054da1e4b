//! seatkeeper's core: concurrent-session ("seat") limits as leases.
//!
//! - [`domain`]: identifiers, policies, reasons (pure logic).
//! - [`seats`]: the seat store on Redis, the authority on seats (one Lua script per operation).
//! - [`ledger`]: the durable record on SQL (SQLite, PostgreSQL, MySQL/MariaDB), behind a trait;
//!   `dynamo` (feature `dynamodb`, on by default): the same trait on DynamoDB.
//! - [`service`], [`admin`], [`sweep`]: the operations, in domain terms.
//! - [`http`]: the route table and the contract's request and response shapes.

pub mod admin;
pub mod cache;
pub mod config;
pub mod domain;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
pub mod error;
pub mod http;
pub mod ledger;
pub mod seats;
pub mod service;
pub mod sweep;
pub mod telemetry;
pub mod token;
pub mod writer;

pub use config::Config;
pub use error::{Error, Result};
pub use service::Service;

/// The request and body types the handlers take, re-exported so runners need no lambda_http of their own.
pub mod lambda_body {
    pub use lambda_http::{Body, Request, Response};
}
