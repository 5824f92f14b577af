//! `veil`: the one command-line tool. `veil serve` runs a node; every other command is a
//! client of a node's REST API (through `veil-client`).
//!
//! Output is a human table by default and the API's JSON with `--json`. Failures print the
//! node's message and exit with a code that tells scripts what kind of failure it was (see
//! `exit_code`).

mod args;
mod commands;
mod credentials;
mod data;
mod fhe;
mod ml;
mod serve;

use std::process::ExitCode;

use clap::Parser as _;
use veil::output;
use veil_client::ClientError;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: this may replace the process (see the function).
    #[cfg(unix)]
    if let Command::Serve(a) = &cli.command
        && let Some(failed) = serve::hand_off_admin_password(a)
    {
        return failed;
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let json = cli.global.json;
    let result = match cli.command {
        Command::Serve(a) => serve::run(*a).await,
        other => commands::run(other, &cli.global).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err, json),
    }
}

/// Prints an error the way the user asked for, and picks the exit code.
fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let client_err = err.downcast_ref::<ClientError>();
    let code = client_err.map_or(1, exit_code);
    if json {
        let (c, m) = match client_err {
            Some(ClientError::Api { code, message, .. }) => (code.clone(), message.clone()),
            _ => ("cli_error".to_string(), format!("{err:#}")),
        };
        println!(
            "{}",
            serde_json::json!({"error": {"code": c, "message": m}})
        );
    } else {
        eprintln!("error: {err:#}");
        if let Some(ClientError::Api {
            details: Some(d), ..
        }) = client_err
        {
            data::print_error_details(d);
        }
        if let Some(hint) = client_err.and_then(hint) {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::from(code)
}

/// Exit codes by kind of failure, stable for scripts:
/// 1 other, 2 usage, 3 authentication, 4 permission, 5 not found, 6 conflict,
/// 7 budget exhausted, 8 rate limited, 9 audit chain broken, 10 node unreachable.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Api { code, .. } => match code.as_str() {
            "unauthenticated" | "invalid_credentials" | "password_change_required" => 3,
            "forbidden" | "privilege_escalation" => 4,
            c if c.ends_with("_not_found") || c == "not_found" => 5,
            "user_exists" | "role_exists" | "token_name_taken" | "role_in_use" | "preset_role"
            | "last_owner" | "cannot_modify_self" => 6,
            "dataset_exists"
            | "key_exists"
            | "request_not_pending"
            | "model_name_taken"
            | "fhe_key_limit" => 6,
            "budget_exhausted" => 7,
            "rate_limited" => 8,
            "invalid_input"
            | "malformed_json"
            | "weak_password"
            | "invalid_manifest"
            | "upload_rejected"
            | "upload_malformed"
            | "query_refused"
            | "payload_too_large"
            | "invalid_model"
            | "signature_required"
            | "bad_signature"
            | "invalid_validation"
            | "fhe_key_mismatch"
            | "malformed_ciphertext"
            | "invalid_fhe_request" => 2,
            _ => 1,
        },
        ClientError::Transport { .. } => 10,
        ClientError::BadUrl(_) | ClientError::BadCertificate(_) => 2,
        ClientError::Protocol { .. } => 1,
    }
}

fn hint(e: &ClientError) -> Option<&'static str> {
    match e {
        ClientError::Api { code, .. } => match code.as_str() {
            "unauthenticated" => Some("log in again with `veil login`"),
            "password_change_required" => Some("set your own password with `veil passwd`"),
            "forbidden" => Some("ask an administrator for a role with this permission"),
            _ => None,
        },
        ClientError::Transport { .. } => Some("is the node running? check --server / VEIL_SERVER"),
        _ => None,
    }
}
