//! The signed cookie of `mode = "cookie"`: opaque to clients, readable by any gatehouse that
//! has the secret, with no shared state between them.
//!
//! A value is 28 bytes, base64url without padding (38 characters):
//! `token (12) | issued (4, Unix seconds, big-endian) | mac (12)`, where
//! `token = HMAC-SHA-256(secret, "server\0" address)[..12]` names the server without revealing
//! it, and `mac = HMAC-SHA-256(secret, "cookie\0" token issued)[..12]` makes any change to token
//! or time detectable. 96-bit tags: forging one takes 2^96 tries.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const TOKEN: usize = 12;
const MAC: usize = 12;
const LEN: usize = TOKEN + 4 + MAC;

/// A server's name in cookies signed with one key.
pub type Token = [u8; TOKEN];

/// The current key and the previous ones, each keyed once (HMAC's inner and outer pads are
/// computed here, not per request).
pub struct CookieKeys {
    keys: Vec<HmacSha256>,
}

/// A cookie whose signature checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signed {
    /// Which key signed it: 0 is the current one.
    pub key: usize,
    pub token: Token,
    /// When it was issued, in Unix seconds.
    pub issued: u32,
}

impl CookieKeys {
    /// Keys from the current secret and the previous ones, in order.
    pub fn new(current: &str, previous: &[String]) -> Self {
        let keys = std::iter::once(current)
            .chain(previous.iter().map(String::as_str))
            .map(|secret| {
                HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size")
            })
            .collect();
        Self { keys }
    }

    /// How many keys there are (the current one first).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The token that names `address` under key `key`.
    pub fn token(&self, key: usize, address: &str) -> Token {
        let mut mac = self.keys[key].clone();
        mac.update(b"server\0");
        mac.update(address.as_bytes());
        truncate(mac)
    }

    /// A new cookie value for `address`, signed with the current key, issued at `now`.
    pub fn issue(&self, address: &str, now: u32) -> String {
        let token = self.token(0, address);
        let mut value = [0u8; LEN];
        value[..TOKEN].copy_from_slice(&token);
        value[TOKEN..TOKEN + 4].copy_from_slice(&now.to_be_bytes());
        let mac = self.sign(0, &value[..TOKEN + 4]);
        value[TOKEN + 4..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(value)
    }

    /// The cookie's token and time if one of the keys signed it and, with `max_age` (seconds),
    /// it has not expired at `now`. Anything else (forged, tampered, truncated, expired)
    /// is `None`.
    pub fn read(&self, value: &[u8], now: u32, max_age: Option<u32>) -> Option<Signed> {
        let mut raw = [0u8; LEN];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(LEN) => {}
            _ => return None,
        }
        let (signed, tag) = raw.split_at(TOKEN + 4);
        let key = (0..self.keys.len()).find(|&key| {
            let mut mac = self.keys[key].clone();
            mac.update(b"cookie\0");
            mac.update(signed);
            mac.verify_truncated_left(tag).is_ok()
        })?;
        let issued = u32::from_be_bytes(signed[TOKEN..].try_into().expect("four bytes"));
        if max_age.is_some_and(|age| now.saturating_sub(issued) > age) {
            return None;
        }
        Some(Signed {
            key,
            token: signed[..TOKEN].try_into().expect("token bytes"),
            issued,
        })
    }

    fn sign(&self, key: usize, signed: &[u8]) -> [u8; MAC] {
        let mut mac = self.keys[key].clone();
        mac.update(b"cookie\0");
        mac.update(signed);
        truncate(mac)
    }
}

fn truncate<const N: usize>(mac: HmacSha256) -> [u8; N] {
    let full = mac.finalize().into_bytes();
    full[..N].try_into().expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> CookieKeys {
        CookieKeys::new("0123456789abcdef-current", &["0123456789abcdef-old".into()])
    }

    #[test]
    fn a_cookie_reads_back_to_its_server() {
        let keys = keys();
        let value = keys.issue("10.0.0.1:8080", 1_000);
        assert_eq!(value.len(), 38);
        let signed = keys.read(value.as_bytes(), 1_000, None).unwrap();
        assert_eq!(signed.key, 0);
        assert_eq!(signed.token, keys.token(0, "10.0.0.1:8080"));
        assert_ne!(signed.token, keys.token(0, "10.0.0.2:8080"));
        assert_eq!(signed.issued, 1_000);
    }

    #[test]
    fn the_value_names_no_address() {
        let value = keys().issue("10.0.0.1:8080", 1_000);
        for part in ["10.0.0.1", "8080", "10-0-0-1"] {
            assert!(!value.contains(part), "{value}");
        }
    }

    #[test]
    fn tampered_forged_and_foreign_cookies_are_refused() {
        let keys = keys();
        let value = keys.issue("10.0.0.1:8080", 1_000);
        let mut tampered = value.clone().into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.read(&tampered, 1_000, None), None);
        assert_eq!(keys.read(b"", 1_000, None), None);
        assert_eq!(keys.read(b"not base64 !!", 1_000, None), None);
        assert_eq!(keys.read(&value.as_bytes()[..30], 1_000, None), None);
        let stranger = CookieKeys::new("another-secret-entirely", &[]);
        assert_eq!(stranger.read(value.as_bytes(), 1_000, None), None);
    }

    #[test]
    fn expired_cookies_are_refused() {
        let keys = keys();
        let value = keys.issue("10.0.0.1:8080", 1_000);
        assert!(keys.read(value.as_bytes(), 1_060, Some(60)).is_some());
        assert!(keys.read(value.as_bytes(), 1_061, Some(60)).is_none());
    }

    #[test]
    fn a_previous_secret_still_reads() {
        let old = CookieKeys::new("0123456789abcdef-old", &[]);
        let value = old.issue("10.0.0.1:8080", 1_000);
        let signed = keys().read(value.as_bytes(), 1_000, None).unwrap();
        assert_eq!(signed.key, 1);
        assert_eq!(signed.token, keys().token(1, "10.0.0.1:8080"));
    }
}
