//! Phase `finish`: the access log line and the release of the server, once per request,
//! however it ends — a response body sent to its end, a client gone mid-body, an upgrade
//! closed, or gatehouse's own answer.

use std::time::Instant;

use crate::access_log::{AccessLog, AccessRecord};
use crate::pool::InFlight;

/// What ends with the request: the claim on a server (counted in flight until dropped) and
/// the access log line, written with the bytes actually sent.
pub struct Finish {
    pub claim: Option<InFlight>,
    pub record: AccessRecord,
    pub log: AccessLog,
    pub started: Option<Instant>,
}

impl Finish {
    /// Writes the access log line with the bytes actually sent; the claim ends when `self`
    /// is dropped.
    pub fn finish(&mut self, bytes_sent: u64) {
        if self.log.enabled() {
            self.record.bytes_sent = bytes_sent;
            self.record.duration = self.started.map(|t| t.elapsed()).unwrap_or_default();
            self.log.write(&self.record);
        }
    }
}
