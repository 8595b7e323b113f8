//! The gatehouse under test: in-process on an actix system thread of its own, or the real
//! binary as a child process with its stdout (the access log) collected.

use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gatehouse::settings::Settings;

use super::{settings, test_env, TempDir, DEADLINE};

/// A gatehouse running in-process on its own actix system thread; stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Every client listener's address, in the order of `listen`.
    pub listeners: Vec<SocketAddr>,
    /// Every TLS listener's address, in the order of `tls.listen`.
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stopper: gatehouse::server::Stopper,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts with `settings` and returns once every listener is bound.
    pub fn start(settings: Settings) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let gatehouse = gatehouse::Gatehouse::start(settings)
                    .await
                    .expect("gatehouse starts");
                let addrs = (
                    gatehouse.listeners().to_vec(),
                    gatehouse.tls_listeners().to_vec(),
                    gatehouse.admin_address(),
                );
                tx.send((addrs, gatehouse.stopper())).unwrap();
                gatehouse.run_until_stopped().await.unwrap();
            })
        });
        let ((listeners, tls, admin), stopper) =
            rx.recv_timeout(DEADLINE).expect("gatehouse started");
        Self {
            addr: listeners[0],
            listeners,
            tls,
            admin,
            stopper,
            thread: Some(thread),
        }
    }

    /// Starts with settings from TOML text (or a [`super::Toml`]).
    pub fn from_toml(toml: impl Display) -> Self {
        Self::start(settings(toml))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopper.stop(false);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The gatehouse binary running with a settings file, its stdout (the access log) collected.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// The first TLS listener, when the settings have `[tls]`.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The settings file it runs with; rewrite it and send SIGHUP to reload.
    pub config: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_closed: mpsc::Receiver<()>,
    _dir: TempDir,
}

impl Process {
    /// Starts the binary with settings from TOML text (or a [`super::Toml`]) and returns
    /// once its log says every listener is bound.
    pub fn start(toml: impl Display) -> Self {
        let toml = toml.to_string();
        let dir = TempDir::new();
        let config = dir.write("gatehouse.toml", &toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("--config")
            .arg(&config)
            .current_dir(&dir.0)
            .envs(test_env())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatehouse binary starts");
        let bound = listeners_logged(&mut child);
        let (stdout, stdout_closed) = collect_stdout(&mut child);
        let (mut addr, mut admin, mut tls) = (None, None, None);
        let wants_tls = toml
            .parse::<toml::Table>()
            .is_ok_and(|table| table.contains_key("tls"));
        while addr.is_none() || admin.is_none() || (wants_tls && tls.is_none()) {
            let (kind, listening) = bound
                .recv_timeout(DEADLINE)
                .expect("gatehouse binary listening");
            match kind {
                "admin" => admin = Some(listening),
                "tls" => tls = tls.or(Some(listening)),
                _ => addr = Some(listening),
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            tls,
            admin: admin.unwrap(),
            config,
            stdout,
            stdout_closed,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for exit, up to the deadline; returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the process with SIGTERM and returns every line it wrote to stdout.
    pub fn stdout_until_exit(self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        self.stdout_closed
            .recv_timeout(DEADLINE)
            .expect("stdout closes when gatehouse exits");
        let lines = self.stdout.lock().unwrap().clone();
        lines
    }

    /// Waits until at least `n` stdout lines arrived; returns them.
    pub fn stdout_lines(&self, n: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.len() >= n || started.elapsed() > DEADLINE {
                return lines;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each listener the child's log (stderr) says it bound: its kind (`admin`, `proxy`, `tls`)
/// and address.
fn listeners_logged(child: &mut Child) -> mpsc::Receiver<(&'static str, SocketAddr)> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            for (kind, marker) in [
                ("admin", "admin API on http://"),
                ("proxy", "listening on http://"),
                ("tls", "listening on https://"),
            ] {
                if let Some((_, rest)) = line.split_once(marker) {
                    let addr = rest.split_whitespace().next().unwrap();
                    let _ = tx.send((kind, addr.parse().unwrap()));
                }
            }
        }
    });
    rx
}

/// Every line the child writes to stdout, and word when stdout closes.
fn collect_stdout(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stdout = child.stdout.take().unwrap();
    let (closed, stdout_closed) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
        let _ = closed.send(());
    });
    (lines, stdout_closed)
}

/// Runs the binary to completion with args, in `dir`, with extra environment; its exit code,
/// stdout and stderr.
pub fn run_binary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("gatehouse binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
