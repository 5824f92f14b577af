//! The client commands: each calls the node through `veil-client` and prints the answer.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veil_api_types::*;
use veil_client::{Client, ClientOptions};

use crate::args::*;
use crate::credentials::{self, Credentials};
use crate::output::{Table, amount, fields, print_json, time};

const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Where to connect and as whom, from flags, environment and the stored login.
pub(crate) struct Session {
    pub(crate) client: Client,
    json: bool,
}

fn options(g: &Global) -> Result<ClientOptions> {
    let ca_cert_pem = match &g.ca_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    Ok(ClientOptions {
        ca_cert_pem,
        timeout: None,
    })
}

fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

fn session(g: &Global) -> Result<Session> {
    let dir = credentials::config_dir(g.config_dir.as_deref())?;
    let stored = credentials::load(&dir)?;
    let server = g
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    // A stored token is only ever sent to the server it came from.
    let token = g.token.clone().or_else(|| {
        stored
            .filter(|c| normalize(&c.server) == normalize(&server))
            .map(|c| c.token)
    });
    let Some(token) = token else {
        bail!(
            "not logged in to {server}: run `veil login --server {server} --email <you>` or set VEIL_TOKEN"
        );
    };
    let client = Client::with_options(&server, &options(g)?)?.with_token(token);
    Ok(Session {
        client,
        json: g.json,
    })
}

fn read_password(prompt: &str) -> Result<String> {
    rpassword::prompt_password(prompt).context("cannot read the password from the terminal")
}

fn stdin_lines(n: usize) -> Result<Vec<String>> {
    let stdin = std::io::stdin();
    let mut out = Vec::new();
    for line in stdin.lock().lines().take(n) {
        out.push(line.context("cannot read standard input")?);
    }
    Ok(out)
}

fn ok() -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: Command, g: &Global) -> Result<ExitCode> {
    match cmd {
        Command::Login(a) => login(a, g).await,
        Command::Logout => logout(g).await,
        Command::Whoami => whoami(&session(g)?).await,
        Command::Passwd(a) => passwd(&session(g)?, a.password_stdin).await,
        Command::Users(c) => users(&session(g)?, c).await,
        Command::Roles(c) => roles(&session(g)?, c).await,
        Command::Tokens(c) => tokens(&session(g)?, c).await,
        Command::Budget(c) => budget(&session(g)?, c).await,
        Command::Audit(c) => audit(&session(g)?, c).await,
        Command::Datasets(c) => crate::data::datasets(&session(g)?.client, g.json, c).await,
        Command::Query(a) => crate::data::query(&session(g)?.client, g.json, a).await,
        Command::Keys(crate::args::KeysCmd::Generate { out }) => {
            crate::ml::generate_key(&out, g.json)
        }
        Command::Keys(c) => crate::ml::keys(&session(g)?.client, g.json, c).await,
        Command::Models(c) => crate::ml::models(&session(g)?.client, g.json, c).await,
        Command::Validate(a) => crate::ml::validate(&session(g)?.client, g.json, a).await,
        Command::Requests(c) => crate::ml::requests(&session(g)?.client, g.json, c).await,
        Command::Fhe(c) => crate::fhe::run(c, g, || Ok(session(g)?.client)).await,
        Command::Serve(_) => unreachable!("dispatched in main"),
    }
}

async fn login(a: LoginArgs, g: &Global) -> Result<ExitCode> {
    let dir = credentials::config_dir(g.config_dir.as_deref())?;
    let server = g
        .server
        .clone()
        .or_else(|| credentials::load(&dir).ok().flatten().map(|c| c.server))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let client = Client::with_options(&server, &options(g)?)?;
    let (password, mut new_password) = if a.password_stdin {
        let mut lines = stdin_lines(2)?.into_iter();
        let pw = lines.next().context("no password on standard input")?;
        (pw, lines.next().filter(|l| !l.is_empty()))
    } else {
        (read_password(&format!("Password for {}: ", a.email))?, None)
    };
    let out = client.login(&a.email, &password).await?;
    let mut token = out.token.clone();
    let mut token_id = out.token_id.clone();
    if out.user.must_change_password {
        if new_password.is_none() && std::io::stdin().is_terminal() {
            eprintln!("This is a one-time password: choose your own now.");
            let first = read_password("New password: ")?;
            let again = read_password("Repeat new password: ")?;
            if first != again {
                bail!("the passwords do not match; nothing was changed");
            }
            new_password = Some(first);
        }
        match new_password {
            Some(new) => {
                client
                    .with_token(&token)
                    .change_password(&password, &new)
                    .await?;
                // The session survives the change; log in afresh anyway so the stored
                // token belongs to a session opened with the real password.
                let again = client.login(&a.email, &new).await?;
                token = again.token;
                token_id = again.token_id;
            }
            None => eprintln!(
                "warning: {} still has a one-time password; run `veil passwd` before anything else",
                a.email
            ),
        }
    }
    let path = credentials::save(
        &dir,
        &Credentials {
            server: normalize(&server),
            email: out.user.email.clone(),
            token,
            token_id,
        },
    )?;
    if g.json {
        print_json(&serde_json::json!({
            "server": normalize(&server),
            "email": out.user.email,
            "role": out.user.role,
            "expires_at": out.expires_at,
            "credentials": path,
        }))?;
    } else {
        println!(
            "logged in to {} as {} ({}); session expires {}",
            normalize(&server),
            out.user.email,
            out.user.role,
            time(Some(&out.expires_at))
        );
    }
    ok()
}

async fn logout(g: &Global) -> Result<ExitCode> {
    let dir = credentials::config_dir(g.config_dir.as_deref())?;
    if let Ok(s) = session(g) {
        match s.client.logout().await {
            Ok(()) | Err(veil_client::ClientError::Api { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    credentials::forget(&dir)?;
    if g.json {
        print_json(&serde_json::json!({"logged_out": true}))?;
    } else {
        println!("logged out");
    }
    ok()
}

async fn whoami(s: &Session) -> Result<ExitCode> {
    let me = s.client.me().await?;
    if s.json {
        print_json(&me)?;
    } else {
        print!(
            "{}",
            fields(&[
                ("email", me.user.email.clone()),
                ("role", me.user.role.clone()),
                ("server", s.client.base_url().to_string()),
                ("token", format!("{} ({})", me.token.id, me.token.kind)),
                ("permissions", me.permissions.join(", ")),
            ])
        );
        if me.user.must_change_password {
            println!("note: you still have a one-time password; run `veil passwd`");
        }
    }
    ok()
}

async fn passwd(s: &Session, from_stdin: bool) -> Result<ExitCode> {
    let (current, new) = if from_stdin {
        let lines = stdin_lines(2)?;
        match lines.as_slice() {
            [c, n] => (c.clone(), n.clone()),
            _ => bail!("give the current and the new password on two lines of standard input"),
        }
    } else {
        let current = read_password("Current password: ")?;
        let new = read_password("New password: ")?;
        if new != read_password("Repeat new password: ")? {
            bail!("the passwords do not match; nothing was changed");
        }
        (current, new)
    };
    s.client.change_password(&current, &new).await?;
    if s.json {
        print_json(&serde_json::json!({"password_changed": true}))?;
    } else {
        println!("password changed; your other sessions were ended");
    }
    ok()
}

fn user_row(u: &UserView) -> Vec<String> {
    let status = if u.disabled {
        "disabled"
    } else if u.must_change_password {
        "pending (one-time password)"
    } else {
        "active"
    };
    vec![
        u.id.to_string(),
        u.email.clone(),
        u.role.clone(),
        status.into(),
        time(Some(&u.created_at)),
    ]
}

fn print_user(u: &UserView) {
    let mut t = Table::new(&["ID", "EMAIL", "ROLE", "STATUS", "CREATED"]);
    t.row(user_row(u));
    print!("{}", t.render());
}

async fn users(s: &Session, cmd: UsersCmd) -> Result<ExitCode> {
    let c = &s.client;
    match cmd {
        UsersCmd::List => {
            let list = c.list_users().await?;
            if s.json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "EMAIL", "ROLE", "STATUS", "CREATED"]);
            for u in &list {
                t.row(user_row(u));
            }
            print!("{}", t.render());
        }
        UsersCmd::Show { user } => {
            let u = c.get_user(&user).await?;
            if s.json {
                print_json(&u)?;
            } else {
                print_user(&u);
            }
        }
        UsersCmd::Create { email, role } => {
            let created = c.create_user(&email, &role).await?;
            if s.json {
                print_json(&created)?;
            } else {
                println!(
                    "created {} ({})\none-time password: {}\nIt is shown only now. The user must choose their own password at first login.",
                    created.user.email, created.user.role, created.one_time_password
                );
            }
        }
        UsersCmd::Disable { user } => update_user(s, &user, None, Some(true)).await?,
        UsersCmd::Enable { user } => update_user(s, &user, None, Some(false)).await?,
        UsersCmd::SetRole { user, role } => update_user(s, &user, Some(role), None).await?,
        UsersCmd::ResetPassword { user } => {
            let r = c.reset_password(&user).await?;
            if s.json {
                print_json(&r)?;
            } else {
                println!(
                    "new one-time password for {user}: {}\nTheir sessions were ended.",
                    r.one_time_password
                );
            }
        }
    }
    ok()
}

async fn update_user(
    s: &Session,
    user: &str,
    role: Option<String>,
    disabled: Option<bool>,
) -> Result<()> {
    let u = s
        .client
        .update_user(user, &UpdateUserRequest { role, disabled })
        .await?;
    if s.json {
        print_json(&u)
    } else {
        print_user(&u);
        Ok(())
    }
}

fn print_role(r: &RoleView) {
    print!(
        "{}",
        fields(&[
            ("name", r.name.clone()),
            ("kind", if r.preset { "preset" } else { "custom" }.into()),
            ("description", r.description.clone()),
            ("permissions", r.permissions.join(", ")),
        ])
    );
}

async fn roles(s: &Session, cmd: RolesCmd) -> Result<ExitCode> {
    let c = &s.client;
    match cmd {
        RolesCmd::List => {
            let list = c.list_roles().await?;
            if s.json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["NAME", "KIND", "PERMISSIONS"]);
            for r in &list {
                t.row(vec![
                    r.name.clone(),
                    if r.preset { "preset" } else { "custom" }.into(),
                    r.permissions.join(","),
                ]);
            }
            print!("{}", t.render());
        }
        RolesCmd::Show { name } => {
            let r = c.get_role(&name).await?;
            if s.json {
                print_json(&r)?;
            } else {
                print_role(&r);
            }
        }
        RolesCmd::Create {
            name,
            permissions,
            description,
        } => {
            let r = c
                .create_role(&CreateRoleRequest {
                    name,
                    permissions: permissions
                        .into_iter()
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect(),
                    description,
                })
                .await?;
            if s.json {
                print_json(&r)?;
            } else {
                println!("created role {}", r.name);
                print_role(&r);
            }
        }
        RolesCmd::Delete { name } => {
            c.delete_role(&name).await?;
            if s.json {
                print_json(&serde_json::json!({"deleted": name}))?;
            } else {
                println!("deleted role {name}");
            }
        }
        RolesCmd::Permissions => {
            let list = c.permissions().await?;
            if s.json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["PERMISSION", "ALLOWS"]);
            for p in list {
                t.row(vec![p.name, p.description]);
            }
            print!("{}", t.render());
        }
    }
    ok()
}

/// Parses `30d`, `12h`, `45m`, `90s` or `never`.
pub fn parse_lifetime(s: &str) -> Result<Option<Duration>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid lifetime {s:?}: use e.g. 30d, 12h, 45m or never"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" | "" => Some(n),
        _ => None,
    }
    .with_context(|| format!("invalid lifetime {s:?}: use e.g. 30d, 12h, 45m or never"))?;
    if secs == 0 {
        bail!("a lifetime must be positive");
    }
    Ok(Some(Duration::from_secs(secs)))
}

async fn tokens(s: &Session, cmd: TokensCmd) -> Result<ExitCode> {
    let c = &s.client;
    match cmd {
        TokensCmd::Create { name, expires_in } => {
            let t = c.create_token(&name, parse_lifetime(&expires_in)?).await?;
            if s.json {
                print_json(&t)?;
            } else {
                println!(
                    "token {} ({}), expires {}\n{}\nIt is shown only now; use it as VEIL_TOKEN or an `Authorization: Bearer` header.",
                    t.info.name.as_deref().unwrap_or("-"),
                    t.info.id,
                    t.info
                        .expires_at
                        .as_ref()
                        .map_or_else(|| "never".to_string(), |e| time(Some(e))),
                    t.token
                );
            }
        }
        TokensCmd::List => {
            let list = c.list_tokens().await?;
            if s.json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "NAME", "KIND", "STATUS", "EXPIRES", "LAST USED"]);
            for tok in list {
                let status = if tok.revoked_at.is_some() {
                    "revoked"
                } else if tok.active {
                    "active"
                } else {
                    "expired"
                };
                t.row(vec![
                    tok.id,
                    tok.name.unwrap_or_else(|| "-".into()),
                    tok.kind,
                    status.into(),
                    time(tok.expires_at.as_ref()),
                    time(tok.last_used_at.as_ref()),
                ]);
            }
            print!("{}", t.render());
        }
        TokensCmd::Revoke { id } => {
            c.revoke_token(&id).await?;
            if s.json {
                print_json(&serde_json::json!({"revoked": id}))?;
            } else {
                println!("revoked token {id}");
            }
        }
    }
    ok()
}

fn print_budget_report(r: &BudgetReportView) {
    println!("budget of {}", r.user);
    if r.budgets.is_empty() {
        println!("no budget set: DP queries will be refused until an administrator sets one");
        return;
    }
    let mut t = Table::new(&[
        "SCOPE", "ε CAP", "ε SPENT", "ε LEFT", "δ CAP", "δ SPENT", "δ LEFT",
    ]);
    for b in &r.budgets {
        t.row(vec![
            b.dataset.clone().unwrap_or_else(|| "all datasets".into()),
            amount(b.epsilon_cap),
            amount(b.epsilon_spent),
            amount(b.epsilon_remaining),
            amount(b.delta_cap),
            amount(b.delta_spent),
            amount(b.delta_remaining),
        ]);
    }
    print!("{}", t.render());
    if !r.recent.is_empty() {
        println!("\nrecent spending:");
        let mut t = Table::new(&["AT", "DATASET", "ε", "δ", "PURPOSE", "REFERENCE"]);
        for l in &r.recent {
            t.row(vec![
                time(Some(&l.at)),
                l.dataset.clone().unwrap_or_else(|| "-".into()),
                amount(l.epsilon),
                amount(l.delta),
                l.purpose.clone(),
                l.reference.clone(),
            ]);
        }
        print!("{}", t.render());
    }
}

async fn budget(s: &Session, cmd: BudgetCmd) -> Result<ExitCode> {
    let c = &s.client;
    match cmd {
        BudgetCmd::Set {
            user,
            epsilon,
            delta,
            dataset,
        } => {
            let b = c
                .set_budget(
                    &user,
                    &SetBudgetRequest {
                        dataset,
                        epsilon,
                        delta,
                    },
                )
                .await?;
            if s.json {
                print_json(&b)?;
            } else {
                println!(
                    "budget of {user} for {}: ε {} (spent {}), δ {} (spent {})",
                    b.dataset.as_deref().unwrap_or("all datasets"),
                    amount(b.epsilon_cap),
                    amount(b.epsilon_spent),
                    amount(b.delta_cap),
                    amount(b.delta_spent)
                );
            }
        }
        BudgetCmd::Show { user } => {
            let r = match user {
                Some(u) => c.user_budget(&u).await?,
                None => c.my_budget().await?,
            };
            if s.json {
                print_json(&r)?;
            } else {
                print_budget_report(&r);
            }
        }
    }
    ok()
}

async fn audit(s: &Session, cmd: AuditCmd) -> Result<ExitCode> {
    let c = &s.client;
    match cmd {
        AuditCmd::List {
            after,
            limit,
            actor,
            action,
        } => {
            let page = c
                .audit(&AuditQuery {
                    after,
                    limit: Some(limit),
                    actor,
                    action,
                })
                .await?;
            if s.json {
                return print_json(&page).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAILS",
            ]);
            for e in &page.entries {
                t.row(vec![
                    e.seq.to_string(),
                    time(Some(&e.at)),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                    e.details.to_string(),
                ]);
            }
            print!("{}", t.render());
            if let Some(next) = page.next_after {
                println!("more: veil audit list --after {next}");
            }
        }
        AuditCmd::Verify => {
            let r = c.verify_audit().await?;
            if s.json {
                print_json(&r)?;
            } else if let Some(bad) = &r.first_bad {
                println!(
                    "TAMPERED: {} ({} entries verified before it)",
                    bad.reason, r.entries_checked
                );
            } else {
                println!("ok: {} entries, chain intact", r.entries_checked);
            }
            if !r.ok {
                return Ok(ExitCode::from(9));
            }
        }
    }
    ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("never").expect("ok"), None);
        assert_eq!(
            parse_lifetime("90d").expect("ok"),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            parse_lifetime("12h").expect("ok"),
            Some(Duration::from_secs(43_200))
        );
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("3w").is_err());
        assert!(parse_lifetime("d").is_err());
    }
}
