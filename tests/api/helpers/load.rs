//! Bounded keep-alive load from a few client threads, for proving that a change made while
//! traffic flows fails no request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::Conn;

/// Most requests one client sends, so a test that forgets to stop its load still ends.
const REQUESTS_PER_CLIENT: usize = 5_000;

/// Client threads sending `GET /name` through a proxy, counting answers and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    clients: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads, each sending `GET /name` on one keep-alive connection (a
    /// fresh one after a failure).
    pub fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
                thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    for _ in 0..REQUESTS_PER_CLIENT {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
                        match conn.try_read(false) {
                            Ok(response) if response.status == 200 => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                conn = Conn::open(addr);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            failures,
            done,
            clients,
        }
    }

    /// Waits until `n` more requests have been answered (or the clients have all finished).
    pub fn wait_for(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        while self.done.load(Ordering::Relaxed) < target
            && !self.clients.iter().all(|c| c.is_finished())
        {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients and returns how many requests failed.
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        self.failures.load(Ordering::Relaxed)
    }
}
