//! Unit tests of `crate::policy`.

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "ACME_REGION").then(|| "eu-west-1".into())
}

#[test]
fn a_full_policy_file_parses_to_effective_policies() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        [default]
        max_memory = "128MiB"

        [tenants.acme]
        max_memory = "64MiB"
        timeout_secs = 60
        fuel = 5000
        max_concurrency = 2
        max_job_output = "64KiB"
        modules = ["wc"]
        env = ["ACME_REGION", "NOT_SET_ANYWHERE", "ACME_REGION", "NOT_SET_ANYWHERE"]
        network = ["127.0.0.1:8080"]
        dirs = [{{ host = "{}", guest = "/data" }}]
        "#,
        dir.path().display()
    );
    let p = Policies::parse(&text, env).unwrap();
    let acme = p.for_tenant("acme").unwrap();
    assert_eq!(acme.sandbox.max_memory, 64 << 20);
    assert_eq!(acme.sandbox.timeout, Duration::from_secs(60));
    assert_eq!(acme.sandbox.max_job_output, 64 << 10);
    // Each once, however often listed; the unset one said so.
    assert_eq!(
        acme.sandbox.env,
        vec![("ACME_REGION".into(), "eu-west-1".into())]
    );
    assert_eq!(acme.unset_env, ["NOT_SET_ANYWHERE"]);
    assert_eq!(
        p.unset_env_warnings(),
        [
            "tenant acme passes through NOT_SET_ANYWHERE, which is not set here; its jobs will not see it"
        ]
    );
    assert!(acme.sandbox.preopens[0].read_only, "read-only unless said");
    assert!(acme.allows_module("wc") && !acme.allows_module("other"));
    assert!(p.uses_fuel());
    let other = p.for_tenant("someone-else").unwrap();
    assert_eq!(other.sandbox.max_memory, 128 << 20);
    assert_eq!(other.sandbox.max_job_output, 256 << 10);
    assert_eq!(other.sandbox.network, NetworkPolicy::Denied);
}

#[test]
fn keys_weights_and_queues_are_read_and_a_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("acme.key");
    std::fs::write(&key, "0123456789abcdef-acme").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[tenants.acme]\nweight = 3\nqueues = [\"acme-jobs\"]\nkey_file = \"{}\"\n[tenants.trial]\n",
        key.display()
    );
    let p = Policies::parse(&text, env).unwrap();
    assert!(p.signing_key("acme").is_some() && p.signing_key("trial").is_none());
    assert_eq!(
        p.bound_queues(),
        [("acme".to_owned(), "acme-jobs".to_owned())]
    );
    assert!(p.slot_settings().contains(&("acme".to_owned(), None, 3)));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = Policies::parse(&text, env).unwrap_err();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn unknown_tenants_are_rejected_without_a_default() {
    let p = Policies::parse("[tenants.acme]\n", env).unwrap();
    assert!(p.for_tenant("acme").is_some());
    assert!(p.for_tenant("intruder").is_none());
}

#[test]
fn bad_files_say_what_is_wrong() {
    for (text, expected) in [
        ("[tenants.acme]\nmax_memory = \"lots\"", "byte size"),
        ("[tenants.acme]\nnetwork = [\"nohost\"]", "host:port"),
        (
            "[tenants.acme]\ndirs = [{ host = \"/nonexistent/x\", guest = \"/d\" }]",
            "/nonexistent/x",
        ),
        (
            "[tenants.acme]\ndirs = [{ host = \"/tmp\", guest = \"rel\" }]",
            "absolute",
        ),
        ("[tenants.acme]\nmax_concurency = 2", "unknown field"),
        ("[tenants.acme]\nmax_concurrency = 0", "at least 1"),
        (
            "[tenants.acme]\nmax_job_output = \"2MiB\"",
            "above the ceiling of 262144",
        ),
        (
            "[tenants.acme]\nreply_to = [\"a*b\"]",
            "may only end a prefix",
        ),
        (
            "[tenants.acme]\nreply_to = [\"bad name\"]",
            "reply_to `bad name`",
        ),
        ("[tenants.\"Bad Name\"]\n", "not a valid name"),
        ("[tenants.acme]\nweight = 0", "weight must be at least 1"),
        (
            "[tenants.acme]\nenv = [\"A B\"]",
            "\"A B\" is not an environment variable name",
        ),
        (
            "[tenants.acme]\nenv = [\"A\\u0000B\"]",
            "\"A\\0B\" is not an environment variable name",
        ),
        (
            "[tenants.a]\nqueues = [\"q\"]\n[tenants.b]\nqueues = [\"q\"]",
            "bound to both a and b",
        ),
        ("[default]\nqueues = [\"q\"]", "belong to a named tenant"),
        (
            "[tenants.acme]\nkey_file = \"/nonexistent/acme.key\"",
            "/nonexistent/acme.key",
        ),
    ] {
        let err = Policies::parse(text, env).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}
