//! The data plane.
//!
//! [`Gateway`] holds the running configuration (swapped atomically on reload) and answers one
//! request at a time in [`Gateway::handle`], which reads top to bottom as the inbound stack.
//! [`serve`] accepts connections (HTTP/1.1 and HTTP/2, plaintext or rustls) and drains them on
//! shutdown. Each declared route is a `portcullis_policy::Chain` built in [`build::route_chain`].

mod body_rate;
pub mod build;
mod client;
mod drain;
mod egress;
mod forward;
mod gateway;
mod head_timer;
mod headers;
mod inventory;
mod oauth_endpoints;
mod observe;
mod outbox_worker;
mod pool;
mod router;
mod send_deadline;
mod server;
mod template;
mod tls;
mod webhook;
mod webhook_failures;
mod webhook_signer;

pub use gateway::{BuildError, Gateway, Services};
pub use headers::client_ip;
pub use inventory::{path_shape, DeclaredRoute, Inventory, InventoryReport};
pub use outbox_worker::run_outbox;
pub use router::check_path;
pub use server::{serve, ShutdownSignal};
pub use tls::load_server_tls;
pub use webhook_failures::{FailureCount, WebhookFailures};
pub use webhook_signer::{WebhookSigner, WEBHOOK_SIGNING_CONSUMER};
