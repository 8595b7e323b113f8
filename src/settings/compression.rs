//! `[compression]` and a route's `compression`: which responses gatehouse compresses, with
//! what (docs/compression.md).

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// Response compression. Off by default, as NGINX's gzip.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// The codings gatehouse offers, best first; the client's `Accept-Encoding` picks among
    /// them.
    pub algorithms: Vec<Algorithm>,
    /// Responses whose `Content-Length` is below this are sent as they are.
    pub min_bytes: ByteSize,
    /// Media types compressed: exact (`application/json`) or a family (`text/*`).
    pub types: Vec<String>,
    pub levels: Levels,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithms: vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip],
            min_bytes: ByteSize::kib(1),
            types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "application/xhtml+xml",
                "application/rss+xml",
                "application/atom+xml",
                "application/ld+json",
                "application/manifest+json",
                "application/wasm",
                "image/svg+xml",
                "font/ttf",
                "font/otf",
            ]
            .map(String::from)
            .to_vec(),
            levels: Levels::default(),
        }
    }
}

/// The compression level of each coding.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Levels {
    /// 1 (fastest) to 9 (smallest).
    pub gzip: u32,
    /// 0 (fastest) to 11 (smallest).
    pub br: u32,
    /// 1 (fastest) to 19 (smallest).
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            gzip: 5,
            br: 4,
            zstd: 3,
        }
    }
}

/// A content coding gatehouse can produce.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(try_from = "String", into = "String")]
pub enum Algorithm {
    Gzip,
    Brotli,
    Zstd,
}

impl Algorithm {
    /// The coding's name in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }
}

one_of!(Algorithm { "gzip" => Algorithm::Gzip, "br" => Algorithm::Brotli, "zstd" => Algorithm::Zstd });

impl From<Algorithm> for String {
    fn from(algorithm: Algorithm) -> String {
        algorithm.token().into()
    }
}
