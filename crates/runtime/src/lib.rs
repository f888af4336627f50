//! What every ALP service shares, written once: the gRPC server bootstrap (health, reflection,
//! metrics, graceful drain), storage pools and migrations, the Redis Cluster client and the
//! two-level cache, the error-to-status mapping, request validation helpers and the downstream
//! channel set-up.

pub mod announce;
pub mod batch;
pub mod breaker;
pub mod cache;
pub mod client;
pub mod coalesce;
pub mod db;
pub mod deadline;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod page;
pub mod redis;
pub mod server;
pub mod shutdown;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod validate;

pub use error::{ErrorKind, FieldViolation, ServiceError, StoreError};
