//! Setting values with units: durations ("250ms", "10s", "5m") and sizes ("64KiB", "1MiB").

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit, as operators write it in NGINX and HAProxy settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

/// The longest duration a setting takes: past it, adding a duration to a clock can overflow,
/// and no timeout of a proxy needs more.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

impl Duration {
    fn bounded(duration: std::time::Duration) -> Result<Self, String> {
        if duration > MAX_DURATION {
            return Err("longer than the most a setting takes (365 days)".into());
        }
        Ok(Duration(duration))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let duration = humantime::parse_duration(text.trim()).map_err(|err| {
            format!("not a duration ({err}); write it like \"250ms\", \"10s\" or \"5m\"")
        })?;
        Duration::bounded(duration)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written with a unit ("64KiB", "1MiB", "512"); a bare number is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| ByteSize(size.as_u64()))
            .map_err(|err| format!("not a size ({err}); write it like \"64KiB\" or \"1MiB\""))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        match self.0 {
            0 => write!(f, "0"),
            n if n % MIB == 0 => write!(f, "{}MiB", n / MIB),
            n if n % 1024 == 0 => write!(f, "{}KiB", n / 1024),
            n => write!(f, "{n}"),
        }
    }
}

/// Accepts a string with a unit, or a bare integer (seconds for durations, bytes for sizes).
fn deserialize_with_unit<'de, D, T>(deserializer: D, bare: fn(u64) -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Number(n) => Ok(bare(n)),
        // From the environment every value is text: a bare number there means the same.
        Raw::Text(text) if text.trim().parse::<u64>().is_ok() => {
            Ok(bare(text.trim().parse().unwrap_or_default()))
        }
        Raw::Text(text) => text
            .parse()
            .map_err(|err: String| de::Error::custom(format!("{text:?} is {err}"))),
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = deserialize_with_unit(deserializer, Duration::from_secs)?;
        Duration::bounded(duration.0)
            .map_err(|err| de::Error::custom(format!("{duration} is {err}")))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_with_unit(deserializer, ByteSize)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!("10s".parse::<Duration>().unwrap(), Duration::from_secs(10));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::from_secs(300));
        assert!("ten seconds".parse::<Duration>().is_err());
        assert!("10".parse::<Duration>().is_err());
        assert!("400days".parse::<Duration>().is_err());
        assert!("365days".parse::<Duration>().is_ok());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65_536));
        assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1_048_576));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        assert!("lots".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(65_536).to_string(), "64KiB");
        assert_eq!(ByteSize(3 * 1_048_576).to_string(), "3MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
