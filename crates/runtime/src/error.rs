//! The error vocabulary shared by the services and its one mapping to gRPC status.
//!
//! Each service keeps its own typed error enum; it only has to say which [`ErrorKind`] a value is.

use std::fmt;

use tonic::{Code, Status};

/// What went wrong, in the terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    /// A bug or an unexpected state: logged in full, never shown to the caller.
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

/// Implemented by every service's error type.
pub trait ServiceError: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// The one mapping from a service error to a gRPC status. Internal errors are logged with their
/// cause and answered with a generic message so no internals reach the caller.
pub fn to_status<E: ServiceError>(err: &E) -> Status {
    let kind = err.kind();
    match kind {
        ErrorKind::Internal => {
            tracing::error!(error = %err, source = ?std::error::Error::source(err), "internal error");
            Status::internal("internal error; see the service log")
        }
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => {
            tracing::warn!(error = %err, "dependency failure");
            Status::new(kind.code(), err.to_string())
        }
        _ => Status::new(kind.code(), err.to_string()),
    }
}

/// A request field that failed validation: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// Prefixes the field path, e.g. `items[3]` + `prompt` → `items[3].prompt`.
    pub fn within(mut self, parent: impl fmt::Display) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    /// Names the entry of a list, e.g. `skill_ids` → `skill_ids[3]`: checks name the list and
    /// only a failure pays for the entry's name.
    pub fn entry(mut self, index: usize) -> Self {
        self.field = format!("{}[{index}]", self.field);
        self
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldViolation {}

/// A storage failure, classified so callers can tell "retry later" from "bug".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database statement timed out")]
    Timeout(#[source] sqlx::Error),
    #[error("unique constraint violated")]
    Conflict(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl ServiceError for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Unavailable(_) => ErrorKind::Unavailable,
            StoreError::Timeout(_) => ErrorKind::DeadlineExceeded,
            StoreError::Conflict(_) => ErrorKind::AlreadyExists,
            StoreError::Other(_) | StoreError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(err)
            }
            sqlx::Error::Database(db) => {
                // 57014: PostgreSQL query_canceled (statement_timeout); SQLITE_BUSY (5) is a lock wait
                // that outlived busy_timeout.
                match db.code().as_deref() {
                    Some("57014") => StoreError::Timeout(err),
                    Some("5") | Some("517") => StoreError::Unavailable(err),
                    _ if db.is_unique_violation() => StoreError::Conflict(err),
                    _ => StoreError::Other(err),
                }
            }
            _ => StoreError::Other(err),
        }
    }
}
