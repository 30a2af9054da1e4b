//! Housekeeping and the operator's views, in domain terms, over the service: [`sweep`] (what ran
//! out, and drift repaired), [`admin`] (the per-user views and repairs of the admin routes),
//! [`licenses`] (the operator's per-license views: who holds the seats, ending one, a new key),
//! [`tokens`] (license-scoped admin tokens, and who an admin caller is) and [`usage`] (a
//! feature's use over time).

pub mod admin;
pub mod licenses;
pub mod sweep;
pub mod tokens;
pub mod usage;
