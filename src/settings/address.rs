//! Server addresses as the settings write them: `host:port`.

use actix_web::http::uri::Authority;

/// Parses `host:port` (an IP address or a name) into an authority for upstream URIs.
pub fn parse_address(address: &str) -> Result<Authority, String> {
    let authority: Authority = address.parse().map_err(|_| {
        "not an address; write it as host:port, e.g. \"127.0.0.1:9001\"".to_string()
    })?;
    if authority.as_str().contains('@') {
        return Err("an address cannot carry user information".into());
    }
    match authority.port_u16() {
        Some(port) if port != 0 => {}
        Some(_) => return Err("port 0 cannot be connected to".into()),
        None => return Err("the port is missing; write it as host:port".into()),
    }
    if authority.host().is_empty() {
        return Err("the host is missing; write it as host:port".into());
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_host_and_port() {
        assert!(parse_address("127.0.0.1:9001").is_ok());
        assert!(parse_address("backend.internal:80").is_ok());
        assert!(parse_address("[::1]:9001").is_ok());
        assert!(parse_address("127.0.0.1").is_err());
        assert!(parse_address("127.0.0.1:0").is_err());
        assert!(parse_address("127.0.0.1:99999").is_err());
        assert!(parse_address("user@host:80").is_err());
        assert!(parse_address("not an address").is_err());
        assert!(parse_address(":80").is_err());
    }
}
