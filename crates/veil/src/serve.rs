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
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
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
    /// Asked for explicitly; otherwise sized from the open-files limit at start.
    max_connections: Option<usize>,
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
    // `VEIL_ADMIN_PASSWORD` arrives here on stdin too (`hand_off_admin_password`).
    if args.admin_password_stdin {
        server.admin_password = Some(read_admin_password(std::io::stdin().lock())?);
    } else if !cfg!(unix) {
        // Without exec, the variable is read in place (and stays in the environment).
        server.admin_password = std::env::var(ADMIN_PASSWORD_VAR)
            .ok()
            .filter(|p| !p.is_empty());
    }
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
    if let Some(n) = args
        .max_connections_per_address
        .or(file.max_connections_per_address)
    {
        server.api.connections.max_per_address = n;
    }
    if let Some(t) = args.header_read_timeout.or(file.header_read_timeout) {
        server.api.connections.header_read_timeout = parse_lifetime(&t)?
            .context("the header read timeout cannot be `never`: give e.g. 20s")?;
    }
    if let Some(t) = args.idle_timeout.or(file.idle_timeout) {
        server.api.connections.idle_timeout =
            parse_lifetime(&t)?.context("the idle timeout cannot be `never`: give e.g. 60s")?;
    }
    let max_connections = args.max_connections.or(file.max_connections);
    if max_connections == Some(0) {
        bail!("--max-connections must be at least 1");
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
        server.core.fhe_rate_limit.max_events = n;
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
        max_connections,
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

/// The variable that may carry the owner's first password.
const ADMIN_PASSWORD_VAR: &str = "VEIL_ADMIN_PASSWORD";
/// Longer than any password a person types or a secret manager hands out, and far below a
/// pipe's smallest capacity (one page), so handing it over can never block.
const MAX_ADMIN_PASSWORD_BYTES: u64 = 1024;

/// Reads the owner's first password: one line, without its line ending.
fn read_admin_password(input: impl std::io::Read) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    input
        .take(MAX_ADMIN_PASSWORD_BYTES + 1)
        .read_to_string(&mut text)
        .context("cannot read the admin password from stdin")?;
    if text.len() as u64 > MAX_ADMIN_PASSWORD_BYTES {
        bail!("the admin password is longer than {MAX_ADMIN_PASSWORD_BYTES} bytes");
    }
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        bail!("--admin-password-stdin: no password on stdin");
    }
    Ok(password)
}

/// `VEIL_ADMIN_PASSWORD` would stay readable in the node's environment (`/proc/<pid>/environ`,
/// and every child process) for the node's whole life, and removing a variable does not erase
/// the environment block the kernel shows. So the node re-executes itself without it, handing
/// the password over on a pipe as its standard input (`--admin-password-stdin`). Returns only
/// if that failed (with the exit code), or `None` if there is nothing to hand over.
#[cfg(unix)]
pub fn hand_off_admin_password(args: &ServeArgs) -> Option<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::process::CommandExt as _;
    let password = std::env::var_os(ADMIN_PASSWORD_VAR)?;
    if password.is_empty() {
        // Nothing secret to hide; an empty value means "not set", as it always has.
        return None;
    }
    let fail = |message: String| {
        eprintln!("error: {message}");
        Some(ExitCode::FAILURE)
    };
    if args.admin_password_stdin {
        return fail(format!(
            "give the admin password either in {ADMIN_PASSWORD_VAR} or with --admin-password-stdin, not both"
        ));
    }
    if password.len() as u64 > MAX_ADMIN_PASSWORD_BYTES || password.as_bytes().contains(&b'\n') {
        return fail(format!(
            "{ADMIN_PASSWORD_VAR} must be one line of at most {MAX_ADMIN_PASSWORD_BYTES} bytes"
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return fail(format!(
                "cannot find the running program to restart it: {e}"
            ));
        }
    };
    let (reader, mut writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot hand over {ADMIN_PASSWORD_VAR}: {e}")),
    };
    // A pipe holds far more than the longest accepted password, so this cannot block.
    if let Err(e) = writer
        .write_all(password.as_bytes())
        .and_then(|()| writer.write_all(b"\n"))
    {
        return fail(format!("cannot hand over {ADMIN_PASSWORD_VAR}: {e}"));
    }
    drop(writer);
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--admin-password-stdin")
        .env_remove(ADMIN_PASSWORD_VAR)
        .stdin(reader)
        .exec();
    fail(format!(
        "cannot restart without {ADMIN_PASSWORD_VAR} in the environment: {err}"
    ))
}

/// Descriptors kept back from connections: the store's connections, dataset and model files,
/// upload spools, logs.
const RESERVED_FILES: u64 = 256;
/// Connections a default configuration allows at most, whatever the open-files limit.
const DEFAULT_MAX_CONNECTIONS: u64 = 16_384;

/// Raises the soft open-files limit towards the hard one (a common default is 1 024 soft with
/// far more allowed): every connection holds a descriptor. Returns the soft limit in force.
#[cfg(unix)]
fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    let wanted = now
        .maximum
        .unwrap_or(u64::MAX)
        .min(RESERVED_FILES + DEFAULT_MAX_CONNECTIONS);
    if wanted > soft {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: now.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return wanted,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    soft
}

#[cfg(not(unix))]
fn raise_open_files_limit() -> u64 {
    RESERVED_FILES + DEFAULT_MAX_CONNECTIONS
}

/// How many connections the node accepts at once, given the open-files limit.
fn connection_limit(asked: Option<usize>, open_files: u64) -> Result<usize> {
    let room = open_files.saturating_sub(RESERVED_FILES);
    match asked {
        Some(n) if n as u64 > room => bail!(
            "--max-connections {n} needs more open files than this process may have ({open_files}, \
             of which {RESERVED_FILES} are kept for the node's own files); raise `ulimit -n` or ask for fewer"
        ),
        Some(n) => Ok(n),
        None => {
            let n = room.min(DEFAULT_MAX_CONNECTIONS);
            if n < 64 {
                tracing::warn!(
                    open_files,
                    "the open-files limit leaves room for few connections; raise `ulimit -n`"
                );
            }
            Ok(usize::try_from(n.max(16)).unwrap_or(usize::MAX))
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let mut settings = resolve(args)?;
    veil::logging::init(settings.log_json, &settings.log_level)?;
    let open_files = raise_open_files_limit();
    settings.server.api.connections.max_connections =
        connection_limit(settings.max_connections, open_files)?;
    tracing::info!(
        open_files,
        max_connections = settings.server.api.connections.max_connections,
        max_per_address = settings.server.api.connections.max_per_address,
        "connection limits"
    );
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
            ServeArgs {
                max_connections: Some(0),
                ..ServeArgs::default()
            },
            ServeArgs {
                idle_timeout: Some("never".into()),
                ..ServeArgs::default()
            },
        ] {
            assert!(resolve(args).is_err());
        }
    }

    #[test]
    fn connections_are_sized_from_the_open_files_limit() {
        assert_eq!(
            connection_limit(None, 1024).expect("fits"),
            1024 - RESERVED_FILES as usize
        );
        assert_eq!(
            connection_limit(None, 1 << 20).expect("fits"),
            DEFAULT_MAX_CONNECTIONS as usize
        );
        assert_eq!(connection_limit(Some(100), 1024).expect("fits"), 100);
        let too_many = connection_limit(Some(2000), 1024).expect_err("refused");
        assert!(format!("{too_many}").contains("ulimit -n"), "{too_many}");
        assert_eq!(
            connection_limit(None, 300).expect("shrinks rather than stops"),
            44
        );
        assert_eq!(connection_limit(None, 260).expect("at least a few"), 16);
    }

    #[test]
    fn the_admin_password_is_one_line_of_stdin() {
        assert_eq!(
            read_admin_password(&b"correct horse\nignored"[..]).expect("read"),
            "correct horse"
        );
        assert!(read_admin_password(&b"\n"[..]).is_err());
        assert!(read_admin_password(&vec![b'a'; 5000][..]).is_err());
    }
}
