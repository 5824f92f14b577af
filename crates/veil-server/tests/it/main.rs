//! `veil-server`'s integration tests, as one binary: the whole node is linked once, not once
//! per file. Each module is one area; `common` starts real nodes (SQLite, and PostgreSQL when
//! `VEIL_TEST_POSTGRES_URL` is set).

mod architecture;
mod common;
mod datasets;
mod e2e;
mod fhe;
mod matrix;
mod models;
mod openapi;
mod tamper;
mod tls;
