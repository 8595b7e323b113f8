//! Pools: groups of servers that host the same content, and how one is picked per request.
//!
//! The [`Pool`] actor (`actor.rs`) is the only writer of a pool's membership; it is told
//! through a [`PoolHandle`] (`handle.rs`). It publishes an immutable [`PoolSnapshot`]
//! (`snapshot.rs`) that request handlers read without a message round trip. Per-request
//! counters (in flight, requests, failures) and the condition that health checks and live
//! traffic write are atomics on each [`Server`] (the condition as data: what it means is
//! `health`'s to decide); each algorithm of `balance/` keeps its selection state in the
//! snapshot behind atomics or a short mutex.

mod actor;
mod balance;
mod budget;
mod condition;
mod handle;
mod latency;
mod server;
mod snapshot;

pub use actor::{Apply, Follow, MembershipChanged, Pool, PoolCommand, PoolError};
pub use balance::{balancer, Balancer, KeySource, PickRequest};
pub use budget::RetryBudget;
pub use condition::{Condition, FailureWindow, PassiveVerdict, ProbeReport, ProbeVerdict};
pub use handle::PoolHandle;
pub use latency::{now as clock, PeakEwma};
pub use server::{parse_address, Server, ServerOptions, ServerStats};
pub use snapshot::InFlight;
pub use snapshot::{PickError, PoolSnapshot};
