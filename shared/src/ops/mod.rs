//! Housekeeping and the operator's views, in domain terms, over the service: [`sweep`] (what ran
//! out, and drift repaired) and [`admin`] (what the admin routes read and free).

pub mod admin;
pub mod sweep;
