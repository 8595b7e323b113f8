//! Settings for a test gatehouse: a TOML document edited by key path, which fails loudly when
//! a key it is asked to change is not where the test expects it, and loaded through the same
//! layering and validation as the binary's.

use std::collections::HashMap;
use std::fmt;

use gatehouse::settings::{Settings, Sources};
use toml::{Table, Value};

use super::TempDir;

/// Settings as a TOML document, built and edited by key path: dotted keys, with a number
/// naming an entry of an array (`pools.web.retry.attempts`, `tls.certificates.0.ocsp_file`).
///
/// Every edit checks the document's shape: changing a key that is not there, setting one in
/// a table that does not exist, or adding one that already exists panics with the path and
/// the document, so a test cannot silently run with settings other than it says.
#[derive(Clone, Debug)]
pub struct Toml(Table);

impl Toml {
    /// A listener on port 0 with one worker and the access log off; no routes, no pools.
    pub fn base() -> Self {
        Self::parse("[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[log]\naccess = \"off\"\n")
    }

    /// The document in `text`; panics, showing it, when it is not TOML.
    pub fn parse(text: &str) -> Self {
        match text.parse::<Table>() {
            Ok(table) => Self(table),
            Err(err) => panic!("test settings are not TOML ({err}):\n{text}"),
        }
    }

    /// Sets `path` to `value`, a new key or a new value for one that is there; the table
    /// that holds it must exist.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (parent, key) = split_last(path);
        let shown = self.to_string();
        let table = if parent.is_empty() {
            Some(&mut self.0)
        } else {
            match lookup(&mut self.0, &parent) {
                Some(Value::Table(table)) => Some(table),
                _ => None,
            }
        };
        let Some(table) = table else {
            panic!(
                "cannot set `{path}`: no table `{}` in\n{shown}",
                parent.join(".")
            );
        };
        table.insert(key.to_string(), value.into());
        self
    }

    /// Changes `path`, which must be set already, to a new value.
    pub fn change(mut self, path: &str, value: impl Into<Value>) -> Self {
        let shown = self.to_string();
        let segments: Vec<&str> = path.split('.').collect();
        match lookup(&mut self.0, &segments) {
            Some(slot) => *slot = value.into(),
            None => panic!("cannot change `{path}`: it is not set in\n{shown}"),
        }
        self
    }

    /// Adds the table `path`, written as TOML text, where nothing of that name is set yet;
    /// tables on the way are made.
    pub fn add(self, path: &str, table: &str) -> Self {
        self.insert_new(path, Self::parse(table).0)
    }

    fn insert_new(mut self, path: &str, table: Table) -> Self {
        let (parent, key) = split_last(path);
        let shown = self.to_string();
        let parent = tables_along(&mut self.0, &parent, path);
        if parent.contains_key(key) {
            panic!("cannot add `{path}`: it is set already in\n{shown}");
        }
        parent.insert(key.to_string(), Value::Table(table));
        self
    }

    /// Appends a table, written as TOML text, to the array of tables at `path` (made when
    /// absent, with the tables on the way).
    pub fn push(mut self, path: &str, table: &str) -> Self {
        let (parent, key) = split_last(path);
        let parent = tables_along(&mut self.0, &parent, path);
        match parent
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(Value::Table(Self::parse(table).0)),
            other => panic!("cannot push to `{path}`: it holds {other}"),
        }
        self
    }

    /// A route, written as the keys of one `[[routes]]` entry, after those there already.
    pub fn route(self, keys: &str) -> Self {
        self.push("routes", keys)
    }

    /// A new pool `name` of `servers` (addresses as settings write them).
    pub fn pool(self, name: &str, servers: &[impl fmt::Display]) -> Self {
        let servers: Vec<Value> = servers
            .iter()
            .map(|server| {
                let mut entry = Table::new();
                entry.insert("address".into(), server.to_string().into());
                Value::Table(entry)
            })
            .collect();
        let mut pool = Table::new();
        pool.insert("servers".into(), Value::Array(servers));
        self.insert_new(&format!("pools.{name}"), pool)
    }

    /// Extends the document with a fragment of TOML text: its tables join those of the same
    /// name key by key; a key the document sets already panics.
    pub fn extend(mut self, fragment: &str) -> Self {
        let shown = self.to_string();
        extend_table(&mut self.0, Self::parse(fragment).0, "", &shown);
        self
    }
}

impl fmt::Display for Toml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The segments of `path` before its last, and its last.
fn split_last(path: &str) -> (Vec<&str>, &str) {
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = segments.pop().expect("a key path");
    (segments, last)
}

/// The value at `segments` under `table`; a number names an entry of an array.
fn lookup<'a>(table: &'a mut Table, segments: &[&str]) -> Option<&'a mut Value> {
    let (first, rest) = segments.split_first()?;
    let mut value = table.get_mut(*first)?;
    for segment in rest {
        value = match value {
            Value::Table(table) => table.get_mut(*segment)?,
            Value::Array(items) => items.get_mut(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// The table at `segments` under `table`, making the missing ones (a number after an array's
/// name picks an entry); panics when a value that is not a table is in the way of `path`.
fn tables_along<'a>(table: &'a mut Table, segments: &[&str], path: &str) -> &'a mut Table {
    let Some((first, rest)) = segments.split_first() else {
        return table;
    };
    let value = table
        .entry(first.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    match value {
        Value::Table(inner) => tables_along(inner, rest, path),
        Value::Array(items) => {
            let entry = rest.first().and_then(|index| index.parse::<usize>().ok());
            match entry.and_then(|index| items.get_mut(index)) {
                Some(Value::Table(inner)) => tables_along(inner, &rest[1..], path),
                _ => panic!("cannot reach `{path}`: no table in the array `{first}` there"),
            }
        }
        other => panic!("cannot reach `{path}`: `{first}` holds {other}"),
    }
}

fn extend_table(into: &mut Table, from: Table, at: &str, shown: &str) {
    for (key, value) in from {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (into.get_mut(&key), value) {
            (None, value) => {
                into.insert(key, value);
            }
            (Some(Value::Table(inner)), Value::Table(more)) => {
                extend_table(inner, more, &path, shown)
            }
            (Some(_), _) => panic!("cannot extend `{path}`: it is set already in\n{shown}"),
        }
    }
}

/// One pool `web` of `servers` on the only route, behind [`Toml::base`], with `extra` added
/// as if written under `[pools.web]` (its keys first, then any tables).
pub fn one_pool(servers: &[impl fmt::Display], extra: &str) -> Toml {
    Toml::base()
        .route("pool = \"web\"")
        .pool("web", servers)
        .extend(&format!("[pools.web]\n{extra}"))
}

/// Settings from TOML text, through the same layering and validation as the binary (no
/// settings folder, no environment but the admin API's port); panics when they are invalid.
pub fn settings(toml: impl fmt::Display) -> Settings {
    load(&toml.to_string(), "test.toml")
        .unwrap_or_else(|err| panic!("test settings invalid: {err}"))
}

/// The error settings from TOML text get (certificate files loaded too), as the binary would report it for a file named
/// `bad.toml`; panics when they are valid.
pub fn settings_error(toml: impl fmt::Display) -> String {
    let toml = toml.to_string();
    match load(&toml, "bad.toml") {
        Ok(_) => panic!("settings accepted:\n{toml}"),
        Err(err) => err,
    }
}

/// Loads `toml` from a file named `name` in a folder of its own.
fn load(toml: &str, name: &str) -> Result<Settings, String> {
    let dir = TempDir::new();
    let file = dir.write(name, toml);
    let sources = Sources {
        settings_dir: Some(dir.0.join("none")),
        config: Some(file),
        env: Some(test_env()),
    };
    gatehouse::supervisor::load(&sources)
        .map(|loaded| loaded.settings)
        .map_err(|err| err.to_string())
}

/// The environment every test gatehouse gets: its admin API on an ephemeral port.
pub fn test_env() -> HashMap<String, String> {
    HashMap::from([(
        "GATEHOUSE__ADMIN__LISTEN".to_string(),
        "127.0.0.1:0".to_string(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: [&str; 1] = ["127.0.0.1:1"];

    #[test]
    fn edits_reach_keys_tables_and_entries_of_arrays() {
        let toml = one_pool(&SERVER, "[pools.web.retry]\nattempts = 1")
            .set("server.keep_alive", "5s")
            .change("server.workers", 2)
            .set("routes.0.host", "a.test")
            .route("path = \"/api/\"\npool = \"api\"")
            .pool("api", &SERVER)
            .add("compression", "enabled = true")
            .extend("[pools.api]\nbalance = \"random\"");
        let table: Table = toml.to_string().parse().unwrap();
        assert_eq!(table["server"]["keep_alive"].as_str(), Some("5s"));
        assert_eq!(table["server"]["workers"].as_integer(), Some(2));
        assert_eq!(table["routes"][0]["host"].as_str(), Some("a.test"));
        assert_eq!(table["routes"][1]["pool"].as_str(), Some("api"));
        assert_eq!(
            table["pools"]["web"]["retry"]["attempts"].as_integer(),
            Some(1)
        );
        assert_eq!(table["pools"]["api"]["balance"].as_str(), Some("random"));
        assert_eq!(
            table["pools"]["api"]["servers"][0]["address"].as_str(),
            Some("127.0.0.1:1")
        );
        assert_eq!(table["compression"]["enabled"].as_bool(), Some(true));
    }

    #[test]
    #[should_panic(expected = "cannot change `server.wokers`: it is not set")]
    fn changing_a_key_that_is_not_set_fails() {
        one_pool(&SERVER, "").change("server.wokers", 2);
    }

    #[test]
    #[should_panic(expected = "cannot set `pools.api.balance`: no table `pools.api`")]
    fn setting_a_key_in_a_table_that_does_not_exist_fails() {
        one_pool(&SERVER, "").set("pools.api.balance", "random");
    }

    #[test]
    #[should_panic(expected = "cannot set `routes.1.host`: no table `routes.1`")]
    fn setting_a_key_in_an_entry_that_does_not_exist_fails() {
        one_pool(&SERVER, "").set("routes.1.host", "a.test");
    }

    #[test]
    #[should_panic(expected = "cannot add `pools.web`: it is set already")]
    fn adding_a_pool_that_exists_fails() {
        one_pool(&SERVER, "").pool("web", &SERVER);
    }

    #[test]
    #[should_panic(expected = "cannot add `log`: it is set already")]
    fn adding_a_table_that_exists_fails() {
        one_pool(&SERVER, "").add("log", "access = \"json\"");
    }

    #[test]
    #[should_panic(expected = "cannot extend `server.workers`: it is set already")]
    fn extending_with_a_key_that_is_set_fails() {
        one_pool(&SERVER, "").extend("[server]\nworkers = 2");
    }
}
