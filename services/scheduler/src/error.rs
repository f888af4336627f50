//! The scheduler's errors and their gRPC status.

use std::sync::Arc;

use alp_runtime::client::CallError;
use alp_runtime::{ErrorKind, FieldViolation, ServiceError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    InvalidArgument(#[from] FieldViolation),
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("attempt_id {attempt_id:?} was recorded with a different {fields}; a new answer needs a new attempt id")]
    AttemptConflict { attempt_id: String, fields: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// A downstream call failed; the caller may retry (SubmitAttempt with the same attempt id).
    #[error("{0}")]
    Downstream(#[from] CallError),
    /// A dependency could not be reached for another reason.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store error every request of a batched read shares.
    #[error(transparent)]
    BatchedRead(Arc<StoreError>),
}

impl SchedulerError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        SchedulerError::NotFound { entity, id: id.into() }
    }
}

impl ServiceError for SchedulerError {
    fn kind(&self) -> ErrorKind {
        match self {
            SchedulerError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            SchedulerError::NotFound { .. } => ErrorKind::NotFound,
            SchedulerError::AttemptConflict { .. } => ErrorKind::AlreadyExists,
            SchedulerError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            SchedulerError::Downstream(error) => error.kind(),
            SchedulerError::Unavailable(_) => ErrorKind::Unavailable,
            SchedulerError::Store(err) => err.kind(),
            SchedulerError::BatchedRead(err) => err.kind(),
        }
    }
}

impl From<SchedulerError> for tonic::Status {
    fn from(err: SchedulerError) -> Self {
        alp_runtime::error::to_status(&err)
    }
}
