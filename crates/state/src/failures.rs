//! Authentication failures counted across instances, so a guesser spreading attempts over
//! several Portcullis instances is locked out after about the same number of failures as
//! against one (each instance also keeps its own count; see `portcullis_identity::BruteForce`).

use crate::StateError;
use async_trait::async_trait;
use std::time::Duration;

/// Where failures of one source (an address, a key id) are counted for every instance.
#[async_trait]
pub trait FailureCounter: Send + Sync {
    /// Counts one failure of `key`. More than `max` within `window` lock it out for
    /// `cooldown`; the answer is the lock-out still to run when the key is locked (by this
    /// failure or an earlier one), and `None` otherwise. A locked key counts no more.
    async fn count_failure(
        &self,
        key: &str,
        max: u32,
        window: Duration,
        cooldown: Duration,
    ) -> Result<Option<Duration>, StateError>;
}
