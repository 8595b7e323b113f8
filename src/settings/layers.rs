//! Reads the settings layers with `config`, and reports where each value came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, ConfigError, File, FileFormat, Value, ValueKind};

use super::{validate, Settings, SettingsError};

/// Environment variables with this prefix (and `__` between levels) override settings.
pub const ENV_PREFIX: &str = "GATEHOUSE";
const ENV_SEPARATOR: &str = "__";
const DEFAULT_ORIGIN: &str = "built-in default";
const ENV_ORIGIN: &str = "the environment";

/// Where settings are read from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Folder with `default.toml`, `$GATEHOUSE_ENV.toml` and `local.toml`; `settings` if unset.
    pub settings_dir: Option<PathBuf>,
    /// The `--config` file or folder of `*.toml` files.
    pub config: Option<PathBuf>,
    /// Environment variables; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
}

/// Valid settings, with the merged layers kept for reporting origins.
pub struct Loaded {
    pub settings: Settings,
    layers: Config,
}

/// Reads every layer, merges them, and validates the result.
pub fn load(sources: &Sources) -> Result<Loaded, SettingsError> {
    let mut builder = Config::builder();
    for file in layer_files(sources)? {
        builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
    }
    let env = EnvSource {
        vars: sources
            .env
            .clone()
            .unwrap_or_else(|| std::env::vars().collect()),
    };
    let layers = builder
        .add_source(env)
        .build()
        .map_err(|err| translate(err, None))?;
    let settings: Settings = layers
        .clone()
        .try_deserialize()
        .map_err(|err| translate(err, Some(&layers.cache)))?;
    let loaded = Loaded { settings, layers };
    validate::check(&loaded.settings).map_err(|problem| loaded.invalid(problem))?;
    Ok(loaded)
}

/// Settings from one TOML text over the built-in defaults, unvalidated: for unit tests
/// of the modules that read settings.
#[cfg(test)]
pub fn from_toml(text: &str) -> Settings {
    Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .build()
        .and_then(Config::try_deserialize)
        .expect("test settings parse")
}

/// Settings whose environment variable holds a comma-separated list.
const LIST_KEYS: [&str; 1] = ["server.listen"];

/// The environment layer: `GATEHOUSE__SECTION__KEY` variables, every value kept as the text it
/// is (the settings' types convert it), so a token or header value such as `007` is not
/// turned into the number 7, as `config`'s own environment source would.
#[derive(Clone, Debug)]
struct EnvSource {
    vars: HashMap<String, String>,
}

impl config::Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, Value>, ConfigError> {
        let origin = Some(ENV_ORIGIN.to_string());
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        let mut layer = config::Map::new();
        for (name, value) in &self.vars {
            let Some(path) = name.strip_prefix(&prefix) else {
                continue;
            };
            let key = path.to_lowercase().replace(ENV_SEPARATOR, ".");
            let kind = if LIST_KEYS.contains(&key.as_str()) {
                let items = value
                    .split(',')
                    .map(|item| Value::new(origin.as_ref(), item.trim().to_string()))
                    .collect::<Vec<_>>();
                ValueKind::Array(items)
            } else {
                ValueKind::String(value.clone())
            };
            layer.insert(key, Value::new(origin.as_ref(), kind));
        }
        Ok(layer)
    }
}

/// The layer files that exist, in the order they apply.
fn layer_files(sources: &Sources) -> Result<Vec<PathBuf>, SettingsError> {
    let dir = sources
        .settings_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("settings"));
    let env_name = match &sources.env {
        Some(vars) => vars.get("GATEHOUSE_ENV").cloned(),
        None => std::env::var("GATEHOUSE_ENV").ok(),
    };
    let mut files = vec![dir.join("default.toml")];
    if let Some(name) = env_name.filter(|name| !name.is_empty()) {
        files.push(dir.join(format!("{name}.toml")));
    }
    files.push(dir.join("local.toml"));
    files.retain(|file| file.is_file());
    if let Some(path) = &sources.config {
        files.extend(config_files(path)?);
    }
    Ok(files)
}

/// The `--config` path: one file, or every `*.toml` in a folder in name order.
fn config_files(path: &Path) -> Result<Vec<PathBuf>, SettingsError> {
    let unreadable = |reason: String| SettingsError::File {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(unreadable("no such file or folder".into()));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|err| unreadable(err.to_string()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|file| file.extension().is_some_and(|ext| ext == "toml") && file.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Turns a `config` error into one that names key, value and origin.
fn translate(err: ConfigError, tree: Option<&Value>) -> SettingsError {
    let (key, origin, problem) = match err {
        ConfigError::FileParse { uri, cause } => {
            return SettingsError::File {
                path: uri.unwrap_or_default().into(),
                reason: cause.to_string(),
            }
        }
        ConfigError::At { error, origin, key } => {
            (key.unwrap_or_default(), origin, inner_message(*error))
        }
        ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => (
            key.unwrap_or_default(),
            origin,
            format!("expected {expected}, found {unexpected}"),
        ),
        ConfigError::NotFound(key) => (key, None, "this key is required".into()),
        other => (String::new(), None, other.to_string()),
    };
    let mut key = normalize_key(&key);
    if let Some(field) = unknown_field(&problem) {
        key = if key.is_empty() {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
    }
    let found = tree.and_then(|tree| lookup(tree, &key));
    let origin = origin.or_else(|| {
        tree.and_then(|tree| nearest_origin(tree, &key))
            .map(String::from)
    });
    invalid(&key, found.map(render), origin, problem)
}

/// `config` writes a field after an index without a dot (`routes[0]pool`); add it.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|next| *next != '.' && *next != '[')
        {
            out.push('.');
        }
    }
    out
}

/// The origin of the value at `key`, or of the closest enclosing table that has one.
fn nearest_origin<'a>(tree: &'a Value, key: &str) -> Option<&'a str> {
    let mut key = key;
    loop {
        if let Some(origin) = lookup(tree, key).and_then(leaf_origin) {
            return Some(origin);
        }
        key = &key[..key.rfind(['.', '['])?];
    }
}

/// The field serde names in "unknown field `name`, expected ...".
fn unknown_field(problem: &str) -> Option<&str> {
    problem.strip_prefix("unknown field `")?.split('`').next()
}

fn inner_message(err: ConfigError) -> String {
    match err {
        ConfigError::At { error, .. } => inner_message(*error),
        ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        other => other.to_string(),
    }
}

fn invalid(
    key: &str,
    value: Option<String>,
    origin: Option<String>,
    problem: String,
) -> SettingsError {
    SettingsError::Invalid {
        key: if key.is_empty() {
            "(top level)".into()
        } else {
            key.into()
        },
        value: value.unwrap_or_else(|| "(unset)".into()),
        origin: describe_origin(origin.as_deref(), key),
        problem,
    }
}

/// Names an origin the way an operator finds it: a file path, or the variable's name.
fn describe_origin(origin: Option<&str>, key: &str) -> String {
    match origin {
        Some(ENV_ORIGIN) => format!("environment variable {}", env_name(key)),
        Some(file) => file.to_string(),
        None => DEFAULT_ORIGIN.into(),
    }
}

/// The environment variable that sets `key`, e.g. `GATEHOUSE__SERVER__WORKERS`.
pub fn env_name(key: &str) -> String {
    let path = key.replace('.', ENV_SEPARATOR).to_uppercase();
    format!("{ENV_PREFIX}{ENV_SEPARATOR}{path}")
}

/// Finds the value at a dotted key with `[index]` parts, as `config` writes keys.
fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    let mut node = tree;
    for part in key.split('.').filter(|part| !part.is_empty()) {
        let (name, indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            node = match &node.kind {
                ValueKind::Table(table) => table.get(name)?,
                _ => return None,
            };
        }
        for index in indexes.split(['[', ']']).filter(|i| !i.is_empty()) {
            let index: usize = index.parse().ok()?;
            node = match &node.kind {
                ValueKind::Array(items) => items.get(index)?,
                _ => return None,
            };
        }
    }
    Some(node)
}

/// A value as it would be written in TOML.
fn render(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "(unset)".into(),
        ValueKind::String(text) => format!("{text:?}"),
        ValueKind::Array(items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(key, value)| format!("{key} = {}", render(value)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Keys whose values `--print` hides: the admin token and the sticky-cookie secrets.
fn is_secret(key: &str) -> bool {
    key == "admin.token"
        || key.ends_with(".sticky.secret")
        || key.contains(".sticky.previous_secrets")
}

impl Loaded {
    /// Where the value at `key` came from: a file, an environment variable, or the default.
    pub fn origin(&self, key: &str) -> String {
        let origin = lookup(&self.layers.cache, key).and_then(leaf_origin);
        describe_origin(origin, key)
    }

    /// The effective settings, one `key = value  # origin` line each.
    pub fn effective(&self) -> String {
        let tree = serde_json::to_value(&self.settings).unwrap_or_default();
        let mut lines = Vec::new();
        flatten(&tree, String::new(), &mut lines);
        lines
            .into_iter()
            .map(|(key, value)| {
                // A secret is never printed, only whether it is set.
                let value = if is_secret(&key) && value != "\"\"" && value != "[]" {
                    "(set)".to_string()
                } else {
                    value
                };
                format!("{key} = {value}  # {}\n", self.origin(&key))
            })
            .collect()
    }

    /// The error for a problem found in these settings, naming where the key was set.
    pub fn invalid(&self, problem: validate::Problem) -> SettingsError {
        // A key left unset inside a table a file wrote is blamed on that file.
        SettingsError::Invalid {
            origin: describe_origin(
                nearest_origin(&self.layers.cache, &problem.key),
                &problem.key,
            ),
            key: problem.key,
            value: problem.value,
            problem: problem.problem,
        }
    }
}

/// The origin of a value, or of the first leaf inside it (tables carry none of their own).
fn leaf_origin(value: &Value) -> Option<&str> {
    value.origin().or(match &value.kind {
        ValueKind::Table(table) => table.values().find_map(leaf_origin),
        ValueKind::Array(items) => items.iter().find_map(leaf_origin),
        _ => None,
    })
}

/// Flattens settings into dotted keys; arrays of tables get `[index]`, plain arrays stay whole.
fn flatten(value: &serde_json::Value, key: String, out: &mut Vec<(String, String)>) {
    use serde_json::Value as Json;
    match value {
        Json::Object(map) => {
            for (name, child) in map {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                flatten(child, child_key, out);
            }
        }
        Json::Array(items) if items.iter().any(Json::is_object) => {
            for (index, child) in items.iter().enumerate() {
                flatten(child, format!("{key}[{index}]"), out);
            }
        }
        other => out.push((key, other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_a_dot_after_an_index() {
        assert_eq!(normalize_key("routes[0]pool"), "routes[0].pool");
        assert_eq!(
            normalize_key("pools.web.servers[1]weight"),
            "pools.web.servers[1].weight"
        );
        assert_eq!(normalize_key("server.listen[0]"), "server.listen[0]");
        assert_eq!(normalize_key("a[0][1].b"), "a[0][1].b");
    }

    #[test]
    fn env_names_use_double_underscores() {
        assert_eq!(env_name("server.workers"), "GATEHOUSE__SERVER__WORKERS");
        assert_eq!(
            env_name("pools.web.connect_timeout"),
            "GATEHOUSE__POOLS__WEB__CONNECT_TIMEOUT"
        );
    }
}
