//! Layered settings and `gatehouse --check`, driven through the real binary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The value and origin `--check --print` shows for `key`, from its `key = value  # origin` line.
fn printed(stdout: &str, key: &str) -> Option<(String, String)> {
    let prefix = format!("{key} = ");
    let line = stdout.lines().find(|line| line.starts_with(&prefix))?;
    let (value, origin) = line[prefix.len()..]
        .split_once("  # ")
        .unwrap_or_else(|| panic!("no origin on line {line:?}"));
    Some((value.to_string(), origin.to_string()))
}

fn printed_or_panic(stdout: &str, key: &str) -> (String, String) {
    printed(stdout, key).unwrap_or_else(|| panic!("{key} not printed in:\n{stdout}"))
}

/// Whether an origin names the file `relative` under `dir` (the binary may print it
/// relative to its working directory or absolute).
fn names_file(origin: &str, dir: &Path, relative: &str) -> bool {
    let named = std::fs::canonicalize(dir.join(origin));
    let expected = std::fs::canonicalize(dir.join(relative));
    matches!((named, expected), (Ok(a), Ok(b)) if a == b)
}

fn assert_from_file(stdout: &str, dir: &Path, key: &str, value: &str, file: &str) {
    let (shown, origin) = printed_or_panic(stdout, key);
    assert_eq!(shown, value, "value of {key}:\n{stdout}");
    assert!(
        names_file(&origin, dir, file),
        "{key} should come from {file}, printed origin is {origin:?}"
    );
}

fn assert_from(stdout: &str, key: &str, value: &str, origin: &str) {
    assert_eq!(
        printed_or_panic(stdout, key),
        (value.to_string(), origin.to_string()),
        "{key} in:\n{stdout}"
    );
}

/// `gatehouse --check --print [--config PATH]` in `dir`; asserts it exits 0, returns stdout.
fn print_effective(dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> String {
    let mut args = vec!["--check", "--print"];
    let config = config.map(|path| path.to_str().unwrap().to_string());
    if let Some(path) = &config {
        args.extend(["--config", path.as_str()]);
    }
    let (code, stdout, stderr) = run_binary(dir, &args, env);
    assert_eq!(code, 0, "valid settings refused: {stderr}");
    stdout
}

/// Every layer sets `server.workers` and (but for the built-in defaults) the pool's
/// `connect_timeout` to its own value.
fn layered_settings() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    dir.write(
        "settings/default.toml",
        "[server]\nworkers = 2\nmax_connections = 1000\n\
         [pools.web]\nservers = [{ address = \"127.0.0.1:9001\" }]\nconnect_timeout = \"12s\"\n",
    );
    dir.write(
        "settings/staging.toml",
        "[server]\nworkers = 3\n[pools.web]\nconnect_timeout = \"13s\"\n",
    );
    dir.write(
        "settings/production.toml",
        "[server]\nworkers = 9\n[pools.web]\nconnect_timeout = \"19s\"\n",
    );
    dir.write(
        "settings/local.toml",
        "[server]\nworkers = 4\n[pools.web]\nconnect_timeout = \"14s\"\n",
    );
    let config = dir.write(
        "gatehouse.toml",
        "[server]\nworkers = 5\n[pools.web]\nconnect_timeout = \"15s\"\n",
    );
    (dir, config)
}

const WORKERS_VAR: &str = "GATEHOUSE__SERVER__WORKERS";
const CONNECT_VAR: &str = "GATEHOUSE__POOLS__WEB__CONNECT_TIMEOUT";

#[test]
fn env_variable_overrides_every_file_layer() {
    let (dir, config) = layered_settings();
    let env = [
        ("GATEHOUSE_ENV", "staging"),
        (WORKERS_VAR, "6"),
        (CONNECT_VAR, "1s"),
    ];
    let stdout = print_effective(&dir.0, Some(&config), &env);
    assert_from(
        &stdout,
        "server.workers",
        "6",
        "environment variable GATEHOUSE__SERVER__WORKERS",
    );
    assert_from(
        &stdout,
        "pools.web.connect_timeout",
        "\"1s\"",
        "environment variable GATEHOUSE__POOLS__WEB__CONNECT_TIMEOUT",
    );
    // A key only the lowest file sets shows through every layer above it.
    assert_from_file(
        &stdout,
        &dir.0,
        "server.max_connections",
        "1000",
        "settings/default.toml",
    );
}

#[test]
fn each_settings_layer_overrides_the_one_before_down_to_the_built_in_default() {
    let (dir, config) = layered_settings();
    let staging = [("GATEHOUSE_ENV", "staging")];

    // The --config file beats settings/local.toml.
    let stdout = print_effective(&dir.0, Some(&config), &staging);
    assert_from_file(&stdout, &dir.0, "server.workers", "5", "gatehouse.toml");
    assert_from_file(
        &stdout,
        &dir.0,
        "pools.web.connect_timeout",
        "\"15s\"",
        "gatehouse.toml",
    );

    // Without --config, settings/local.toml beats settings/$GATEHOUSE_ENV.toml.
    let stdout = print_effective(&dir.0, None, &staging);
    assert_from_file(
        &stdout,
        &dir.0,
        "server.workers",
        "4",
        "settings/local.toml",
    );
    assert_from_file(
        &stdout,
        &dir.0,
        "pools.web.connect_timeout",
        "\"14s\"",
        "settings/local.toml",
    );

    // Without local.toml, the file GATEHOUSE_ENV names beats settings/default.toml,
    // and the other environment's file is not read.
    std::fs::remove_file(dir.0.join("settings/local.toml")).unwrap();
    let stdout = print_effective(&dir.0, None, &staging);
    assert_from_file(
        &stdout,
        &dir.0,
        "server.workers",
        "3",
        "settings/staging.toml",
    );
    assert_from_file(
        &stdout,
        &dir.0,
        "pools.web.connect_timeout",
        "\"13s\"",
        "settings/staging.toml",
    );
    let production = print_effective(&dir.0, None, &[("GATEHOUSE_ENV", "production")]);
    assert_from_file(
        &production,
        &dir.0,
        "server.workers",
        "9",
        "settings/production.toml",
    );

    // Without GATEHOUSE_ENV, settings/default.toml beats the built-in defaults.
    let stdout = print_effective(&dir.0, None, &[]);
    assert_from_file(
        &stdout,
        &dir.0,
        "server.workers",
        "2",
        "settings/default.toml",
    );
    assert_from_file(
        &stdout,
        &dir.0,
        "pools.web.connect_timeout",
        "\"12s\"",
        "settings/default.toml",
    );
    assert_from(
        &stdout,
        "pools.web.response_timeout",
        "\"30s\"",
        "built-in default",
    );

    // With no layer at all, the built-in default shows.
    std::fs::remove_file(dir.0.join("settings/default.toml")).unwrap();
    let stdout = print_effective(&dir.0, None, &[]);
    assert_from(&stdout, "server.workers", "0", "built-in default");
    assert_from(
        &stdout,
        "server.listen",
        "[\"127.0.0.1:8080\"]",
        "built-in default",
    );
    assert_eq!(printed(&stdout, "pools.web.connect_timeout"), None);
}

#[test]
fn env_variable_sets_a_key_no_file_mentions() {
    let dir = TempDir::new();
    let config = dir.write(
        "gatehouse.toml",
        "[pools.web]\nservers = [{ address = \"127.0.0.1:9001\" }]\n",
    );
    let stdout = print_effective(
        &dir.0,
        Some(&config),
        &[("GATEHOUSE__SERVER__KEEP_ALIVE", "9s")],
    );
    assert_from(
        &stdout,
        "server.keep_alive",
        "\"9s\"",
        "environment variable GATEHOUSE__SERVER__KEEP_ALIVE",
    );
    assert_from(
        &stdout,
        "pools.web.connect_timeout",
        "\"2s\"",
        "built-in default",
    );
}

#[test]
fn config_folder_applies_its_toml_files_in_name_order() {
    let dir = TempDir::new();
    // Written out of name order, so creation order cannot pass for name order.
    dir.write("conf.d/30-last.toml", "[server]\nworkers = 8\n");
    dir.write(
        "conf.d/10-first.toml",
        "[server]\nworkers = 6\nmax_connections = 1234\n",
    );
    dir.write(
        "conf.d/20-middle.toml",
        "[server]\nworkers = 7\nkeep_alive = \"7s\"\n",
    );
    dir.write("conf.d/99-ignored.txt", "[server]\nworkers = 99\n");
    dir.write("conf.d/99-ignored.toml.bak", "[server]\nworkers = 98\n");
    let stdout = print_effective(&dir.0, Some(&dir.0.join("conf.d")), &[]);
    assert_from_file(
        &stdout,
        &dir.0,
        "server.workers",
        "8",
        "conf.d/30-last.toml",
    );
    assert_from_file(
        &stdout,
        &dir.0,
        "server.keep_alive",
        "\"7s\"",
        "conf.d/20-middle.toml",
    );
    assert_from_file(
        &stdout,
        &dir.0,
        "server.max_connections",
        "1234",
        "conf.d/10-first.toml",
    );
}

#[test]
fn config_folder_applies_over_the_settings_folder() {
    let dir = TempDir::new();
    dir.write(
        "settings/local.toml",
        "[server]\nworkers = 4\nmax_connections = 44\n",
    );
    dir.write("conf.d/a.toml", "[server]\nworkers = 5\n");
    let stdout = print_effective(&dir.0, Some(&dir.0.join("conf.d")), &[]);
    assert_from_file(&stdout, &dir.0, "server.workers", "5", "conf.d/a.toml");
    assert_from_file(
        &stdout,
        &dir.0,
        "server.max_connections",
        "44",
        "settings/local.toml",
    );
}

#[test]
fn a_bad_value_overridden_by_a_later_layer_is_not_an_error() {
    let dir = TempDir::new();
    dir.write("settings/default.toml", "[server]\nworkers = \"many\"\n");
    let config = dir.write("gatehouse.toml", "[server]\nworkers = 3\n");
    let stdout = print_effective(&dir.0, Some(&config), &[]);
    assert_from_file(&stdout, &dir.0, "server.workers", "3", "gatehouse.toml");
}

/// Runs `gatehouse --check --config bad.toml` with `toml`; asserts it exits 1 and that
/// stderr names every one of `expected`; returns stderr.
fn check_refuses(toml: &str, env: &[(&str, &str)], expected: &[&str]) -> String {
    let dir = TempDir::new();
    let config = dir.write("bad.toml", toml);
    let (code, stdout, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", config.to_str().unwrap()],
        env,
    );
    assert_eq!(code, 1, "invalid settings accepted; stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing belongs on stdout: {stdout}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("settings are valid"), "{stderr}");
    stderr
}

const POOL: &str = "[pools.web]\nservers = [{ address = \"127.0.0.1:9001\" }]\n";

#[test]
fn check_accepts_valid_settings_and_exits_zero() {
    let dir = TempDir::new();
    let config = dir.write(
        "good.toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nkeep_alive = \"5s\"\n\
         max_request_header_size = \"16KiB\"\n[log]\naccess = \"json\"\n\
         [[routes]]\nhost = \"*.example.com\"\npath = \"/api/\"\npool = \"web\"\n\
         max_body_size = \"1MiB\"\n\
         [pools.web]\nconnect_timeout = \"250ms\"\n\
         servers = [{ address = \"127.0.0.1:9001\" }, { address = \"localhost:9002\", weight = 2 }]\n",
    );
    let (code, stdout, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.is_empty(),
        "--check without --print prints nothing: {stdout}"
    );
    assert!(!stderr.contains("invalid"), "{stderr}");
}

#[test]
fn check_names_an_unknown_key_and_its_file() {
    check_refuses(
        "[server]\nworkerz = 17\n",
        &[],
        &["server.workerz", "17", "bad.toml"],
    );
}

#[test]
fn check_names_a_value_of_the_wrong_type() {
    check_refuses(
        "[server]\nworkers = \"many\"\n",
        &[],
        &["server.workers", "many", "bad.toml"],
    );
}

#[test]
fn check_names_a_bad_duration() {
    check_refuses(
        "[server]\nkeep_alive = \"10 parsecs\"\n",
        &[],
        &["server.keep_alive", "10 parsecs", "bad.toml"],
    );
}

#[test]
fn check_names_a_bad_size() {
    check_refuses(
        "[server]\nmax_request_header_size = \"lots\"\n",
        &[],
        &["server.max_request_header_size", "lots", "bad.toml"],
    );
}

#[test]
fn check_names_a_route_whose_pool_does_not_exist() {
    check_refuses(
        &format!("[[routes]]\npool = \"nowhere\"\n{POOL}"),
        &[],
        &["routes[0].pool", "nowhere", "bad.toml"],
    );
}

#[test]
fn check_names_a_pool_with_an_empty_server_list() {
    check_refuses(
        "[[routes]]\npool = \"web\"\n[pools.web]\nservers = []\n",
        &[],
        &["pools.web.servers", "[]", "bad.toml"],
    );
}

#[test]
fn check_names_the_file_of_a_pool_that_lists_no_servers() {
    check_refuses(
        "[[routes]]\npool = \"web\"\n[pools.web]\nconnect_timeout = \"1s\"\n",
        &[],
        &["pools.web.servers", "bad.toml"],
    );
}

#[test]
fn check_names_a_bad_value_inside_a_route_entry() {
    check_refuses(
        &format!("[[routes]]\npool = \"web\"\nmax_body_size = \"big\"\n{POOL}"),
        &[],
        &["routes[0].max_body_size", "big", "bad.toml"],
    );
}

#[test]
fn check_names_a_route_that_lacks_its_pool() {
    check_refuses(
        &format!("[[routes]]\npath = \"/x\"\n{POOL}"),
        &[],
        &["routes[0].pool", "bad.toml"],
    );
}

#[test]
fn check_names_an_unknown_section_and_its_file() {
    check_refuses("[serverz]\nworkers = 1\n", &[], &["serverz", "bad.toml"]);
}

#[test]
fn check_names_an_unparsable_server_address() {
    check_refuses(
        "[pools.web]\nservers = [{ address = \"127.0.0.1:9001\" }, { address = \"not an address\" }]\n",
        &[],
        &["pools.web.servers[1].address", "not an address", "bad.toml"],
    );
}

#[test]
fn check_names_a_bad_listen_address() {
    check_refuses(
        "[server]\nlisten = [\"127.0.0.1:99999\"]\n",
        &[],
        &["server.listen", "127.0.0.1:99999", "bad.toml"],
    );
}

#[test]
fn check_names_a_word_outside_the_allowed_list() {
    check_refuses(
        "[log]\naccess = \"xml\"\n",
        &[],
        &["log.access", "xml", "bad.toml", "combined, json, off"],
    );
}

#[test]
fn check_names_the_environment_variable_a_bad_value_came_from() {
    let stderr = check_refuses(
        "[server]\nworkers = 2\n",
        &[("GATEHOUSE__SERVER__WORKERS", "many")],
        &["server.workers", "many", "GATEHOUSE__SERVER__WORKERS"],
    );
    assert!(
        !stderr.contains("bad.toml"),
        "the file is not to blame: {stderr}"
    );
    check_refuses(
        POOL,
        &[(CONNECT_VAR, "10 parsecs")],
        &["pools.web.connect_timeout", "10 parsecs", CONNECT_VAR],
    );
}

#[test]
fn check_names_an_unparsable_toml_file() {
    check_refuses("[server\nworkers = 1\n", &[], &["bad.toml"]);
}

#[test]
fn check_names_the_settings_folder_file_a_bad_value_came_from() {
    let dir = TempDir::new();
    dir.write("settings/default.toml", "[server]\nworkers = 2\n");
    dir.write("settings/local.toml", "[server]\nkeep_alive = \"soon\"\n");
    let config = dir.write("gatehouse.toml", "[server]\nworkers = 3\n");
    let (code, _, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("server.keep_alive"), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");
    assert!(stderr.contains("local.toml"), "{stderr}");
    assert!(!stderr.contains("gatehouse.toml"), "{stderr}");
}

#[test]
fn check_names_a_config_path_that_does_not_exist() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.toml");
    let (code, _, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

/// Runs the binary without `--check`, killing it if it is still running at the deadline.
/// Returns its exit code (None if it had to be killed) and stderr.
fn run_to_exit(dir: &Path, config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("GATEHOUSE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gatehouse binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap())
}

#[test]
fn bad_settings_never_start_a_proxy() {
    // Each listens on an ephemeral port, so a proxy that did start would bind and say so.
    let cases = [
        (
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = \"many\"\n",
            "server.workers",
        ),
        (
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[[routes]]\npool = \"nowhere\"\n",
            "routes[0].pool",
        ),
    ];
    for (bad, key) in cases {
        let dir = TempDir::new();
        let config = dir.write("bad.toml", format!("{bad}{POOL}"));
        let (code, stderr) = run_to_exit(&dir.0, &config);
        assert_eq!(
            code,
            Some(1),
            "bad settings did not end the process: {stderr}"
        );
        assert!(!stderr.contains("listening"), "a proxy started: {stderr}");
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn environment_values_are_taken_as_written() {
    let dir = TempDir::new();
    let config = dir.write("gatehouse.toml", "[server]\nlisten = [\"127.0.0.1:0\"]\n");
    let (code, stdout, stderr) = run_binary(
        &dir.0,
        &["--check", "--print", "--config", config.to_str().unwrap()],
        &[
            ("GATEHOUSE__SERVER__SERVER_HEADER", "007"),
            ("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:1, 127.0.0.1:2"),
            ("GATEHOUSE__SERVER__KEEP_ALIVE", "20"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("server.server_header = \"007\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("server.listen = [\"127.0.0.1:1\",\"127.0.0.1:2\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("server.keep_alive = \"20s\""), "{stdout}");
}

#[test]
fn check_refuses_a_duration_longer_than_a_year() {
    let dir = TempDir::new();
    let config = dir.write(
        "gatehouse.toml",
        "[server]\nkeep_alive = 9223372036854775807\n",
    );
    let (code, _, stderr) = run_binary(
        &dir.0,
        &["--check", "--config", config.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("server.keep_alive") && stderr.contains("365 days"),
        "{stderr}"
    );
}
