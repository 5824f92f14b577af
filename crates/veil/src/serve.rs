//! `veil serve`: settings are merged (defaults < TOML file < VEIL_* environment < flags),
//! validated, and handed to `veil-server`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use veil_server::{ServerConfig, TlsFiles};

use crate::args::ServeArgs;
use crate::commands::parse_lifetime;

/// The TOML file's shape: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    database_url: Option<String>,
    master_key_file: Option<PathBuf>,
    owner_email: Option<String>,
    demo: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    cors_origins: Option<Vec<String>>,
    body_limit: Option<usize>,
    session_ttl: Option<String>,
    max_token_ttl: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    require_signed_models: Option<bool>,
    model_limit: Option<usize>,
    validation_row_time_limit_ms: Option<u64>,
    /// Accepted from files written for older nodes and ignored (with a warning): validations
    /// no longer stop at a wall-clock limit after their charge.
    validation_time_limit: Option<String>,
    fhe_time_limit: Option<String>,
    fhe_samples_per_day: Option<u32>,
    fhe_key_ttl: Option<String>,
}

/// Fully resolved settings.
#[derive(Debug)]
struct Settings {
    server: ServerConfig,
    listen: String,
    demo: bool,
    log_json: bool,
    log_level: String,
}

fn resolve(args: ServeArgs) -> Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("veil-data"));
    let mut server = ServerConfig::new(data_dir);
    server.database_url = args.database_url.or(file.database_url);
    server.master_key_file = args.master_key_file.or(file.master_key_file);
    if let Some(email) = args.owner_email.or(file.owner_email) {
        server.owner_email = email;
    }
    // Never a flag: a password on the command line is visible to every local user in `ps`.
    server.admin_password = std::env::var("VEIL_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    server.tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
    };
    if let Some(origins) = args.cors_origins.or(file.cors_origins) {
        server.api.cors_origins = origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                    bail!("invalid CORS origin {o:?}: use e.g. https://admin.example.org");
                }
                http::HeaderValue::from_str(o).with_context(|| format!("invalid CORS origin {o:?}"))
            })
            .collect::<Result<_>>()?;
    }
    if let Some(limit) = args.body_limit.or(file.body_limit) {
        if limit < 1024 {
            bail!("--body-limit must be at least 1024 bytes");
        }
        server.api.body_limit = limit;
    }
    if let Some(ttl) = args.session_ttl.or(file.session_ttl) {
        server.core.session_ttl = parse_lifetime(&ttl)?
            .context("sessions must expire: give --session-ttl as e.g. 12h")?;
    }
    if let Some(ttl) = args.max_token_ttl.or(file.max_token_ttl) {
        server.core.max_token_ttl = parse_lifetime(&ttl)?;
    }
    server.core.require_signed_models =
        args.require_signed_models || file.require_signed_models.unwrap_or(false);
    if let Some(limit) = args.model_limit.or(file.model_limit) {
        if limit < 1024 {
            bail!("--model-limit must be at least 1024 bytes");
        }
        server.core.model_limit_bytes = limit;
    }
    if let Some(ms) = args
        .validation_row_time_limit_ms
        .or(file.validation_row_time_limit_ms)
    {
        if ms == 0 {
            bail!("--validation-row-time-limit-ms must be at least 1");
        }
        server.core.validation_row_time_limit = std::time::Duration::from_millis(ms);
    }
    if file.validation_time_limit.is_some() {
        tracing::warn!(
            "validation_time_limit is ignored: a charged validation is never cut short (use validation_row_time_limit_ms to bound models before the charge)"
        );
    }
    if let Some(n) = args.fhe_samples_per_day.or(file.fhe_samples_per_day) {
        if n == 0 {
            bail!("--fhe-samples-per-day must be at least 1");
        }
        server.core.fhe_rate_limit.max_failures = n;
    }
    if let Some(t) = args.fhe_time_limit.or(file.fhe_time_limit) {
        server.core.fhe_time_limit = parse_lifetime(&t)?
            .context("encrypted inference needs a time limit, e.g. --fhe-time-limit 10m")?;
    }
    if let Some(t) = args.fhe_key_ttl.or(file.fhe_key_ttl) {
        server.core.fhe_key_ttl = parse_lifetime(&t)?
            .context("evaluation keys need a lifetime, e.g. --fhe-key-ttl 7d")?;
    }
    let log_format = args
        .log_format
        .or(file.log_format)
        .unwrap_or_else(|| "text".into());
    let log_json = match log_format.as_str() {
        "json" => true,
        "text" => false,
        other => bail!("unknown log format {other:?}: use text or json"),
    };
    Ok(Settings {
        server,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".into()),
        demo: args.demo || file.demo.unwrap_or(false),
        log_json,
        log_level: args
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info,sqlx=warn".into()),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let settings = resolve(args)?;
    veil::logging::init(settings.log_json, &settings.log_level)?;
    let data_dir = settings.server.data_dir.clone();
    let owner_email = settings.server.owner_email.clone();
    let prepared = veil_server::prepare(settings.server).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if prepared.is_tls() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    println!(
        "Veil node listening on {url} (store: {}, data: {})",
        prepared.backend(),
        data_dir.display()
    );
    if let Some(otp) = &prepared.owner_password {
        println!(
            "First start: created the owner account {owner_email}\n  one-time password: {}\n  \
             It is shown only now. Log in with: veil login --server {url} --email {owner_email}",
            otp.expose()
        );
    }
    if settings.demo {
        let created = veil_server::demo::seed(&prepared.core).await?;
        for a in &created {
            println!(
                "Demo account {} ({}): one-time password {}",
                a.email, a.role, a.one_time_password
            );
        }
        if created.is_empty() {
            println!(
                "Demo accounts already exist (their passwords were shown on the first demo start)."
            );
        }
    }
    tracing::info!(%url, store = prepared.backend(), "serving");
    prepared.serve(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("veil.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nbody_limit = 4096\ncors_origins = [\"https://ui.example.org\"]\n",
        )
        .expect("write");
        let s = resolve(ServeArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:7171".into()),
            ..ServeArgs::default()
        })
        .expect("resolves");
        assert_eq!(s.listen, "127.0.0.1:7171");
        assert_eq!(s.server.api.body_limit, 4096);
        assert_eq!(s.server.api.cors_origins.len(), 1);
        assert_eq!(s.server.data_dir, PathBuf::from("veil-data"));
        assert_eq!(s.server.core.session_ttl, Duration::from_secs(12 * 3600));

        std::fs::write(&file, "lisen = \"typo\"\n").expect("write");
        let err = resolve(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        })
        .expect_err("unknown keys are errors");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            ServeArgs {
                cors_origins: Some(vec!["admin.example.org".into()]),
                ..ServeArgs::default()
            },
            ServeArgs {
                body_limit: Some(10),
                ..ServeArgs::default()
            },
            ServeArgs {
                session_ttl: Some("never".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                log_format: Some("xml".into()),
                ..ServeArgs::default()
            },
        ] {
            assert!(resolve(args).is_err());
        }
    }
}
