//! Retry schedule (in progress).
