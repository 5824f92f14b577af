//! Request handlers, one module per resource. Each handler parses, calls the core, converts.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod budgets;
pub(crate) mod datasets;
pub(crate) mod fhe;
pub(crate) mod models;
pub(crate) mod roles;
pub(crate) mod system;
pub(crate) mod tokens;
pub(crate) mod users;
