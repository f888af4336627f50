//! The content service's errors and their gRPC status.

use alp_runtime::{ErrorKind, FieldViolation, ServiceError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0}")]
    InvalidArgument(#[from] FieldViolation),
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} {id:?} already exists")]
    AlreadyExists { entity: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ContentError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        ContentError::NotFound { entity, id: id.into() }
    }
}

impl ServiceError for ContentError {
    fn kind(&self) -> ErrorKind {
        match self {
            ContentError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ContentError::NotFound { .. } => ErrorKind::NotFound,
            ContentError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            ContentError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            ContentError::Store(err) => err.kind(),
        }
    }
}

impl From<ContentError> for tonic::Status {
    fn from(err: ContentError) -> Self {
        alp_runtime::error::to_status(&err)
    }
}
