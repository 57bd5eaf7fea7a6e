//! Unit tests of `crate::http`.

use super::*;

#[test]
fn grants_are_origins_with_an_optional_path() {
    let g = HttpGrant::parse("https://API.acme.example").unwrap();
    assert_eq!(
        (g.tls, g.host.as_str(), g.port, g.path_prefix.as_str()),
        (true, "api.acme.example", 443, "/")
    );
    let g = HttpGrant::parse("http://10.0.0.5:8080/v1/").unwrap();
    assert_eq!(
        (g.tls, g.port, g.path_prefix.as_str()),
        (false, 8080, "/v1/")
    );
    assert!(g.matches(false, "10.0.0.5", 8080, "/v1/users"));
    assert!(!g.matches(false, "10.0.0.5", 8080, "/v2/users"));
    // No way out of the prefix through dot segments, plain or encoded.
    for sneaky in [
        "/v1/../admin",
        "/v1/%2e%2E/admin",
        "/v1/./x",
        "/v1/a%2F..%2Fb",
    ] {
        assert!(!g.matches(false, "10.0.0.5", 8080, sneaky), "{sneaky}");
    }
    assert!(
        !g.matches(true, "10.0.0.5", 8080, "/v1/users"),
        "https is another origin"
    );
    assert!(!g.matches(false, "10.0.0.5", 8081, "/v1/users"));
    let g = HttpGrant::parse("http://[::1]:9000").unwrap();
    assert_eq!(g.host, "::1");
    for bad in ["ftp://x", "api.acme.example", "https://", "https://x/?q=1"] {
        assert!(HttpGrant::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_name_resolving_to_loopback_keeps_no_address_but_the_literal_does() {
    let policy = HttpPolicy {
        grants: vec![
            HttpGrant::parse("http://localhost:8080").unwrap(),
            HttpGrant::parse("http://127.0.0.1:8080").unwrap(),
        ],
        ..HttpPolicy::default()
    };
    let hooks = HttpHooks::new(&policy).unwrap();
    assert!(hooks.grants[0].1.is_empty());
    assert_eq!(*hooks.grants[1].1, vec!["127.0.0.1:8080".parse().unwrap()]);
}

#[test]
fn requests_are_admitted_by_grant_and_counted_against_the_limit() {
    let policy = HttpPolicy {
        grants: vec![
            HttpGrant::parse("http://127.0.0.1:8080/api/").unwrap(),
            HttpGrant::parse("http://localhost:8080").unwrap(),
        ],
        max_requests: 1,
        ..HttpPolicy::default()
    };
    let mut hooks = HttpHooks::new(&policy).unwrap();
    let uri = |s: &str| s.parse::<http::Uri>().unwrap();
    assert!(matches!(
        hooks.admit(&uri("http://127.0.0.1:8080/other")),
        Err(Error::HttpRequestDenied)
    ));
    assert!(matches!(
        hooks.admit(&uri("http://localhost:8080/")),
        Err(Error::DestinationIpProhibited)
    ));
    assert!(hooks.admit(&uri("http://127.0.0.1:8080/api/x")).is_ok());
    assert!(matches!(
        hooks.admit(&uri("http://127.0.0.1:8080/api/y")),
        Err(Error::HttpRequestDenied)
    ));
    let usage = hooks.usage();
    assert_eq!((usage.requests, usage.denied), (1, 2));
    assert_eq!(
        usage.limits_hit,
        vec![HttpLimit::InternalAddress, HttpLimit::Requests]
    );
}
