//! Integration tests: the real proxy and real origins on loopback ephemeral ports.

mod helpers;

mod access;
mod access_log;
mod admin;
mod affinity;
mod balancing;
mod compression;
mod edge;
mod ejection;
mod failover;
mod failures;
mod forwarding;
mod health;
mod hiding;
mod http2;
mod limits;
mod memory;
mod reload;
mod retries;
mod settings;
mod shutdown;
mod strict;
mod tls;
mod upstream_tls;
mod websocket;
