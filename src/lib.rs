//! gatehouse: a reverse proxy and HTTP load balancer.
//!
//! `main` parses the command line ([`cli`]) and calls [`run`]; tests start the same code
//! in-process with [`Gatehouse::start`] on port 0.

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod cli;
pub mod compression;
pub mod conn;
pub mod demo;
pub mod health;
pub mod listener;
pub mod pool;
pub mod proxy;
pub mod security;
pub mod server;
pub mod settings;
pub mod state_file;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use server::{run, Gatehouse, StartError};
pub use settings::Settings;
