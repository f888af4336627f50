//! The scheduler's errors and their gRPC status.

use alp_runtime::{ErrorKind, FieldViolation, ServiceError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    InvalidArgument(#[from] FieldViolation),
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("attempt_id {0:?} was recorded for another learner or item")]
    AttemptConflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A downstream call failed; the caller may retry (SubmitAttempt with the same attempt id).
    #[error("{service} service: {message}")]
    Downstream { service: &'static str, code: tonic::Code, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SchedulerError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        SchedulerError::NotFound { entity, id: id.into() }
    }

    pub fn downstream(service: &'static str, status: &tonic::Status) -> Self {
        SchedulerError::Downstream { service, code: status.code(), message: status.message().to_owned() }
    }
}

impl ServiceError for SchedulerError {
    fn kind(&self) -> ErrorKind {
        match self {
            SchedulerError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            SchedulerError::NotFound { .. } => ErrorKind::NotFound,
            SchedulerError::AttemptConflict(_) => ErrorKind::AlreadyExists,
            SchedulerError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            SchedulerError::Downstream { code, .. } => match code {
                tonic::Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::ResourceExhausted => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            SchedulerError::Store(err) => err.kind(),
        }
    }
}

impl From<SchedulerError> for tonic::Status {
    fn from(err: SchedulerError) -> Self {
        alp_runtime::error::to_status(&err)
    }
}
