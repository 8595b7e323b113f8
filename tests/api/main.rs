//! Integration tests: the real proxy and real origins on loopback ephemeral ports.

mod helpers;

mod forwarding;
