use hyper::{Response, StatusCode};

use super::Body;
use crate::jobs::JobError;
use crate::model::ErrorBody;

/// An API failure: the status it maps to and a message saying what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The request body stopped arriving (see `limits.rs`).
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    InsufficientStorage(String),
    /// Something the request needs is not reachable now (etcd); try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() && !matches!(self, ApiError::Unavailable(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        super::json(status, &body).unwrap_or_else(|_| super::empty(status))
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let message = e.to_string();
        match e {
            JobError::BadRequest(_) | JobError::Ambiguous(_) => ApiError::BadRequest(message),
            JobError::NotFound(_) => ApiError::NotFound(message),
            JobError::NameInUse(_)
            | JobError::Running(_)
            | JobError::NotRunning(_)
            | JobError::Removing(_)
            | JobError::NoTerminal(_) => ApiError::Conflict(message),
            JobError::Image(e) => e.into(),
            JobError::Shim(runtime::shim::ShimError::Create(_)) => ApiError::BadRequest(message),
            JobError::Network(
                network::NetworkError::PortConflict { .. }
                | network::NetworkError::PortUnavailable { .. }
                | network::NetworkError::SubnetExhausted { .. },
            ) => ApiError::Conflict(message),
            JobError::Network(network::NetworkError::DuplicatePort(_)) => {
                ApiError::BadRequest(message)
            }
            JobError::Network(network::NetworkError::NotReady(_)) => ApiError::Unavailable(message),
            JobError::Io { source, .. } if is_no_space(&source) => {
                ApiError::InsufficientStorage(message)
            }
            JobError::StopTimeout(_)
            | JobError::Rootfs(_)
            | JobError::Shim(_)
            | JobError::Runtime(_)
            | JobError::Network(_)
            | JobError::Io { .. }
            | JobError::TimedOut { .. }
            | JobError::Internal(_) => ApiError::Internal(message),
        }
    }
}

impl From<image::StoreError> for ApiError {
    fn from(e: image::StoreError) -> ApiError {
        let message = e.to_string();
        match e {
            image::StoreError::NotFound(_) => ApiError::NotFound(message),
            image::StoreError::Ambiguous(_) | image::StoreError::InvalidName { .. } => {
                ApiError::BadRequest(message)
            }
            image::StoreError::InUse { .. } | image::StoreError::BlobsNotKept { .. } => {
                ApiError::Conflict(message)
            }
            _ => ApiError::Internal(message),
        }
    }
}

pub fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}
