//! Origins: the servers behind the proxy, each kind on a loopback port of its own. Every kind
//! is started by [`spawn`], which owns the port, the threads and the stopping, so each can be
//! closed and reopened as a stopped and restarted process would be.

mod app;
mod raw;
mod shop;
mod switchable;
mod tls;
mod websocket;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use actix_web::{web, App, HttpServer};

use super::{HeldPort, DEADLINE};

pub use app::{Origin, GZIP_HELLO};
pub use raw::RawOrigin;
pub use shop::{Shop, Shopper};
pub use switchable::{Mode, Switchable};
pub use tls::TlsOrigin;
pub use websocket::{echoes, WebSocketOrigin};

/// A conversation with one accepted connection.
type Conversation = dyn Fn(TcpStream) + Send + Sync;

/// The routes of an actix-web app.
type Routes = dyn Fn(&mut web::ServiceConfig) + Send + Sync;

/// How an origin serves what it accepts.
pub enum Serve {
    /// Each connection on a std thread of its own, for bytes a server library would not send.
    Connections(Arc<Conversation>),
    /// An actix-web app with one worker, on an actix system of its own.
    App(Arc<Routes>),
}

impl Serve {
    /// Each accepted connection handed to `conversation` on a thread of its own.
    pub fn connections(conversation: impl Fn(TcpStream) + Send + Sync + 'static) -> Self {
        Self::Connections(Arc::new(conversation))
    }

    /// An actix-web app with the routes `configure` sets.
    pub fn app(configure: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static) -> Self {
        Self::App(Arc::new(configure))
    }
}

/// A running origin; dropping it stops it.
pub struct Spawned {
    pub addr: SocketAddr,
    serve: Serve,
    /// Held for the origin's life, so its address stays dead while it is closed.
    port: HeldPort,
    running: Option<Running>,
}

/// What an open origin runs.
enum Running {
    Threads {
        stop: Arc<AtomicBool>,
        acceptor: thread::JoinHandle<()>,
        /// A handle on each open connection, to close them all with the origin.
        connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    },
    App {
        handle: actix_web::dev::ServerHandle,
        system: thread::JoinHandle<()>,
    },
}

/// Starts an origin on a fresh loopback port; returns once it accepts connections.
pub fn spawn(serve: Serve) -> Spawned {
    let port = HeldPort::new();
    let mut origin = Spawned {
        addr: port.addr,
        serve,
        port,
        running: None,
    };
    origin.reopen();
    origin
}

impl Spawned {
    /// Stops accepting and closes every open connection, as a stopped process would; its
    /// address refuses connections until [`Self::reopen`].
    pub fn close(&mut self) {
        match self.running.take() {
            None => {}
            Some(Running::Threads {
                stop,
                acceptor,
                connections,
            }) => {
                stop.store(true, Ordering::SeqCst);
                // Wakes the acceptor, which then sees it is to stop.
                let _ = TcpStream::connect(self.addr);
                let _ = acceptor.join();
                for (_, conn) in connections.lock().unwrap().drain() {
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
            }
            Some(Running::App { handle, system }) => {
                let _ = thread::spawn(move || actix_rt::System::new().block_on(handle.stop(false)))
                    .join();
                let _ = system.join();
            }
        }
    }

    /// Serves again on the same address, as a restarted process would.
    pub fn reopen(&mut self) {
        if self.running.is_some() {
            return;
        }
        let listener = self.port.listen();
        self.running = Some(match &self.serve {
            Serve::Connections(conversation) => accept_on_threads(listener, conversation.clone()),
            Serve::App(routes) => run_app(listener, routes.clone()),
        });
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.close();
    }
}

fn accept_on_threads(listener: TcpListener, conversation: Arc<Conversation>) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(Mutex::new(HashMap::new()));
    let acceptor = {
        let (stop, connections) = (stop.clone(), connections.clone());
        thread::spawn(move || {
            for (id, stream) in (0u64..).zip(listener.incoming()) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { return };
                if let Ok(handle) = stream.try_clone() {
                    connections.lock().unwrap().insert(id, handle);
                }
                let (conversation, connections) = (conversation.clone(), connections.clone());
                thread::spawn(move || {
                    conversation(stream);
                    // The connection closes when its last handle goes, as the conversation
                    // left it: after the stream it ended with.
                    connections.lock().unwrap().remove(&id);
                });
            }
        })
    };
    Running::Threads {
        stop,
        acceptor,
        connections,
    }
}

fn run_app(listener: TcpListener, routes: Arc<Routes>) -> Running {
    let (tx, rx) = mpsc::channel();
    let system = thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let routes = routes.clone();
                App::new().configure(move |config| routes(config))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            tx.send(server.handle()).unwrap();
            server.await.unwrap();
        })
    });
    let handle = rx.recv_timeout(DEADLINE).expect("origin started");
    Running::App { handle, system }
}
