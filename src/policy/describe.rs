//! Policies described for people (`wasm-jobs policy check`): each tenant's
//! effective policy in plain units, and warnings about what it asks for but
//! will not get. Runs in the CLI process and, for the warnings, the worker
//! parent at start.

use super::{Policies, TenantPolicy};
use crate::sandbox::NetworkPolicy;

impl TenantPolicy {
    /// The effective policy for people to read: limits in plain units, the
    /// names (not values) of the environment variables passed through.
    pub fn describe(&self) -> serde_json::Value {
        let s = &self.sandbox;
        serde_json::json!({
            "max_memory_bytes": s.max_memory,
            "timeout_secs": s.timeout.as_secs_f64(),
            "fuel": s.fuel,
            "max_output_bytes": s.max_output,
            "max_job_output_bytes": s.max_job_output,
            "max_concurrency": self.max_concurrency,
            "modules": self.modules.clone().map_or(serde_json::json!("any"), |m| serde_json::json!(m)),
            "oci": self.oci,
            "weight": self.weight,
            "queues": self.queues,
            "key_file": self.key_file,
            "reply_to": self.reply_to.clone().map_or(serde_json::json!("QUEUE-replies*"), |r| serde_json::json!(r)),
            "env": s.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "env_unset": self.unset_env,
            "http": s.http.grants.iter().map(|g| format!("{}://{}:{}{}", if g.tls { "https" } else { "http" }, g.host, g.port, g.path_prefix)).collect::<Vec<_>>(),
            "http_limits": {
                "requests": s.http.max_requests,
                "request_body_bytes": s.http.max_request_body,
                "response_body_bytes": s.http.max_response_body,
                "timeout_secs": s.http.timeout.as_secs_f64(),
            },
            "network": match &s.network {
                NetworkPolicy::Denied => serde_json::json!("denied"),
                NetworkPolicy::AllowList(t) => serde_json::json!(t.iter().map(|t| format!("{}:{}", t.host, t.port)).collect::<Vec<_>>()),
            },
            "dirs": s.preopens.iter().map(|p| serde_json::json!({
                "host": p.host_path, "guest": p.guest_path, "read_only": p.read_only,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Policies {
    /// Every tenant's effective policy, for `policy check`.
    pub fn describe(&self) -> serde_json::Value {
        let tenants: serde_json::Map<String, serde_json::Value> = self
            .tenants
            .iter()
            .map(|(k, v)| (k.clone(), v.describe()))
            .collect();
        serde_json::json!({
            "tenants": tenants,
            "default": self.default.as_ref().map(TenantPolicy::describe),
        })
    }

    /// Warnings for people: each variable a tenant's `env` passes through
    /// that was not set when the file was loaded, so its jobs will not see
    /// it.
    pub fn unset_env_warnings(&self) -> Vec<String> {
        let named = self.tenants.iter().map(|(n, t)| (format!("tenant {n}"), t));
        let default = self.default.iter().map(|t| ("[default]".to_owned(), t));
        named
            .chain(default)
            .flat_map(|(who, t)| {
                t.unset_env.iter().map(move |var| {
                    format!("{who} passes through {var}, which is not set here; its jobs will not see it")
                })
            })
            .collect()
    }
}
