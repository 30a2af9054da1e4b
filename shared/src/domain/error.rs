//! The service's errors in domain terms. `http` maps each to the contract's status, code and shape.

use crate::domain::{EndReason, LimitScope};

/// Which store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    SeatStore,
    Ledger,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Store::SeatStore => "seat store",
            Store::Ledger => "ledger",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    InvalidRequest { field: Option<String>, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("Maximum user limit reached")]
    SeatLimitReached { scope: LimitScope, limit: u32, active: u32, retry_after_seconds: u64 },
    #[error("the session is over ({})", reason.as_str())]
    SessionExpired { reason: EndReason },
    /// A store could not be reached or answered with an error. `detail` is for logs only.
    /// `transient`: a conflict with concurrent work (a deadlock, a busy database) that the same
    /// operation may well get through on a second try.
    #[error("the {} is unavailable", store.as_str())]
    StoreUnavailable { store: Store, detail: String, transient: bool },
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest { field: Some(field.to_owned()), message: message.into() }
    }

    pub fn invalid_owned(field: String, message: String) -> Self {
        Error::InvalidRequest { field: Some(field), message }
    }

    pub fn ledger(e: impl std::fmt::Display) -> Self {
        Error::StoreUnavailable { store: Store::Ledger, detail: e.to_string(), transient: false }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Error::StoreUnavailable { transient: true, .. })
    }

    pub fn seat_store(e: impl std::fmt::Display) -> Self {
        Error::StoreUnavailable { store: Store::SeatStore, detail: e.to_string(), transient: false }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
