//! `wasm-jobs module push|list|inspect|rm`: the module registry from the
//! command line (see `crate::registry`), in the CLI process.

use super::args::{parse_bytes, seconds_up_to};
use crate::engine::EngineSettings;
use crate::executor::Executor;
use crate::paths;
use crate::registry::oci::{OciModules, OciRef};
use crate::registry::{
    CacheSettings, DEFAULT_CACHE_BYTES, DEFAULT_MAX_MODULE_BYTES, DEFAULT_TENANT, Location,
    Registry, RegistryError,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which registry: shared by `module`, `policy check` and `worker`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub(super) struct RegistryArgs {
    /// Registry: a directory (default: `<data dir>/registry`),
    /// `s3://BUCKET[/PREFIX]` (AWS configuration from the environment;
    /// AWS_ENDPOINT_URL_S3 for S3-compatible servers) or
    /// `oci://HOST[:PORT][/PREFIX]` (a repository per module; credentials
    /// from the Docker config file).
    #[arg(long, global = true, env = "WASM_JOBS_REGISTRY")]
    registry: Option<String>,
    /// How long a remote registry's name resolution is trusted before it is
    /// read again (seconds): a push reaches every worker within this time.
    #[arg(long, global = true, value_parser = parse_ttl, default_value = "10")]
    registry_ttl: Duration,
    /// Size cap of this host's cache of blobs downloaded from a remote
    /// registry (least recently used go first).
    #[arg(long, global = true, value_parser = parse_bytes, default_value_t = DEFAULT_CACHE_BYTES)]
    registry_cache_size: u64,
}

impl Default for RegistryArgs {
    /// The data dir's registry directory.
    fn default() -> Self {
        RegistryArgs {
            registry: None,
            registry_ttl: crate::registry::DEFAULT_LATEST_TTL,
            registry_cache_size: DEFAULT_CACHE_BYTES,
        }
    }
}

impl RegistryArgs {
    fn location(&self, data_dir: &Path) -> Result<Location, RegistryError> {
        match &self.registry {
            Some(r) => Location::parse(r),
            None => Ok(Location::Dir(data_dir.join("registry"))),
        }
    }

    fn cache(&self, data_dir: &Path) -> CacheSettings {
        CacheSettings {
            dir: data_dir.join("registry-cache"),
            max_bytes: self.registry_cache_size,
            latest_ttl: self.registry_ttl,
        }
    }

    /// The registry, caching downloads under `data_dir`. The default
    /// directory is created here, so that a registry directory that is
    /// missing later means one that is not there (an unmounted share).
    pub(super) fn open(&self, data_dir: &Path) -> Result<Registry, RegistryError> {
        if self.registry.is_none() {
            let dir = data_dir.join("registry");
            std::fs::create_dir_all(&dir)
                .map_err(|source| RegistryError::Io { path: dir, source })?;
        }
        Ok(Registry::open(
            self.location(data_dir)?,
            self.cache(data_dir),
        ))
    }

    /// The registry as an operator would name it.
    pub(super) fn shown(&self, data_dir: &Path) -> String {
        match &self.registry {
            Some(r) => r.clone(),
            None => data_dir.join("registry").display().to_string(),
        }
    }

    /// The OCI client for `oci://` references, caching under `data_dir`.
    pub(super) fn oci(&self, data_dir: &Path) -> OciModules {
        OciModules::new(self.cache(data_dir))
    }

    /// wasm-jobs' own directories, which no tenant directory may overlap:
    /// the data dir, the artifact cache, and the registry directory or the
    /// remote registry's local cache.
    pub(super) fn own_dirs(
        &self,
        data_dir: &Path,
    ) -> Result<Vec<(&'static str, PathBuf)>, RegistryError> {
        let registry = match self.location(data_dir)? {
            Location::Dir(dir) => dir,
            Location::S3 { .. } | Location::Oci { .. } => data_dir.join("registry-cache"),
        };
        let mut dirs = paths::own_dirs(data_dir, &registry);
        dirs.push(("registry cache", data_dir.join("registry-cache")));
        Ok(dirs)
    }
}

/// The registry and the data dir (which holds the compiled-artifact cache).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RegistryLocation {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Data directory (holds the compiled-artifact cache).
    #[arg(long, global = true, env = "WASM_JOBS_HOME")]
    data_dir: Option<PathBuf>,
}

impl RegistryLocation {
    fn data_dir(&self) -> PathBuf {
        paths::data_dir(self.data_dir.as_deref())
    }

    /// wasm-jobs' own directories, which no tenant directory may overlap.
    pub(super) fn own_dirs(&self) -> Result<Vec<(&'static str, PathBuf)>, RegistryError> {
        self.registry.own_dirs(&self.data_dir())
    }

    /// An executor whose artifact cache is the data directory's.
    fn executor(&self) -> anyhow::Result<Executor> {
        Executor::new(
            EngineSettings::default(),
            paths::compiled_dir(&self.data_dir()),
        )
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, Duration::from_secs(3600), "--registry-ttl is")
}

fn parse_min_age(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, Duration::from_secs(365 * 86400), "--min-age is")
}

/// The `wasm-jobs module` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ModuleCommand {
    /// Validate, compile and store a component under a name.
    /// (or push it to an OCI registry with --to).
    Push {
        file: PathBuf,
        #[arg(long, required_unless_present = "to")]
        name: Option<String>,
        /// Push to an OCI registry instead, as a Wasm OCI artifact
        /// (credentials from the Docker config file).
        #[arg(long, value_name = "oci://HOST/REPO:TAG", conflicts_with_all = ["name", "tenant"])]
        to: Option<String>,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// Largest component accepted.
        #[arg(long, value_parser = parse_bytes, default_value_t = DEFAULT_MAX_MODULE_BYTES)]
        max_size: u64,
    },
    /// The latest version of every module.
    List {
        /// Only this tenant's modules.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Exports, imports, size, digest and compiled-artifact status.
    Inspect {
        /// NAME, NAME@sha256:HEX, or oci://HOST/REPO:TAG (or @sha256:).
        reference: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a module (all its versions) from a tenant; its blobs stay
    /// until `gc`.
    Rm {
        name: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// List blobs no version refers to; with --apply, remove them (an OCI
    /// registry collects its own).
    Gc {
        /// Remove them (without it, a dry run).
        #[arg(long)]
        apply: bool,
        /// Keep blobs younger than this (seconds): a push stores its blob
        /// before the version that refers to it.
        #[arg(long, value_parser = parse_min_age, default_value = "3600")]
        min_age: Duration,
        #[arg(long)]
        json: bool,
    },
}

/// Run one `module` subcommand.
pub(super) async fn run(loc: &RegistryLocation, cmd: ModuleCommand) -> anyhow::Result<u8> {
    let registry = loc.registry.open(&loc.data_dir())?;
    match cmd {
        ModuleCommand::Push {
            file,
            to: Some(to),
            max_size,
            ..
        } => {
            let to = OciRef::parse(&to)?;
            let executor = loc.executor()?;
            let (v, url) = loc
                .registry
                .oci(&loc.data_dir())
                .push(&executor, &file, &to, max_size)
                .await?;
            println!(
                "pushed {to} (component sha256:{}, {} bytes): {url}",
                v.digest, v.size
            );
        }
        ModuleCommand::Push {
            file,
            name,
            tenant,
            max_size,
            ..
        } => {
            let name = name.expect("clap requires --name without --to");
            let executor = loc.executor()?;
            let (v, source) = registry
                .push(&executor, &file, &name, &tenant, max_size)
                .await?;
            let compiled = match source {
                crate::artifact_cache::CompileSource::Cached => "already compiled".to_owned(),
                crate::artifact_cache::CompileSource::Compiled { took } => {
                    format!("compiled in {:.0} ms", took.as_secs_f64() * 1e3)
                }
            };
            println!(
                "pushed {}@sha256:{} for tenant {} ({} bytes, {compiled})",
                v.name, v.digest, v.tenant, v.size
            );
        }
        ModuleCommand::List { tenant, json } => {
            let modules = registry.list(tenant.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string(&modules)?);
            } else {
                for m in modules {
                    println!(
                        "{:<12} {:<24} sha256:{} {:>10} bytes",
                        m.tenant, m.name, m.digest, m.size
                    );
                }
            }
        }
        ModuleCommand::Inspect {
            reference,
            tenant,
            json,
        } => {
            let resolved = if reference.starts_with("oci://") {
                let r = OciRef::parse(&reference)?;
                loc.registry
                    .oci(&loc.data_dir())
                    .resolve(&r, &tenant)
                    .await?
            } else {
                registry.resolve(&reference, &tenant).await?
            };
            let bytes = crate::registry::read(&resolved)?;
            let executor = loc.executor()?;
            let compiled = executor.cache().contains(executor.engine(), &bytes);
            let (imports, exports) = executor.describe(&bytes)?;
            let v = &resolved.version;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": v.name, "tenant": v.tenant, "digest": v.digest, "size": v.size,
                        "pushed_at_ms": v.pushed_at_ms, "compiled": compiled,
                        "imports": imports, "exports": exports,
                    })
                );
            } else {
                println!("{}@sha256:{} (tenant {})", v.name, v.digest, v.tenant);
                println!("  size      {} bytes", v.size);
                println!(
                    "  compiled  {}",
                    if compiled {
                        "yes (artifact cached on this machine)"
                    } else {
                        "no (compiled now)"
                    }
                );
                println!("  exports   {}", exports.join(", "));
                println!("  imports   {}", imports.join(", "));
            }
        }
        ModuleCommand::Rm { name, tenant } => {
            registry.remove(&name, &tenant).await?;
            println!("removed {name} from tenant {tenant}");
        }
        ModuleCommand::Gc {
            apply,
            min_age,
            json,
        } => {
            let report = registry.gc(min_age, !apply).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let verb = if report.removed {
                    "removed"
                } else {
                    "would remove"
                };
                for digest in &report.unreferenced {
                    println!("{verb} sha256:{digest}");
                }
                println!(
                    "{verb} {} unreferenced blob(s), {} bytes; {} younger than {} s kept{}",
                    report.unreferenced.len(),
                    report.bytes,
                    report.too_young.len(),
                    min_age.as_secs_f64(),
                    if report.removed {
                        ""
                    } else {
                        " (dry run: --apply removes them)"
                    }
                );
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DEFAULT_GC_MIN_AGE;
    use clap::Parser;

    #[test]
    fn the_flag_defaults_are_the_registrys() {
        let cli = super::super::Cli::try_parse_from(["wasm-jobs", "module", "gc"]).unwrap();
        let super::super::Command::Module {
            command: ModuleCommand::Gc { min_age, apply, .. },
            location,
        } = cli.command
        else {
            panic!("not module gc");
        };
        assert_eq!(location.registry, RegistryArgs::default());
        assert_eq!(min_age, DEFAULT_GC_MIN_AGE);
        assert!(!apply, "a dry run by default");
    }
}
