//! Logging in, authenticating requests, changing passwords, and the first owner account.

use serde_json::json;
use veil_crypto::{ParsedToken, TokenSecret};
use veil_store::{
    AuditOutcome, NewAuditEntry, NewRole, NewToken, NewUser, PasswordChange, Revokes, TokenKind,
    User,
};
use veil_types::{Email, PresetRole};
use zeroize::Zeroizing;

use crate::{Core, CoreError, Principal, Result, micros};

/// Refreshing `last_used_at` on every request would make every read a write; once a minute
/// is precise enough to spot unused tokens.
const TOUCH_INTERVAL_MICROS: i64 = 60_000_000;

/// A freshly generated password, shown to its user exactly once.
#[derive(Clone)]
pub struct OneTimePassword(String);

impl OneTimePassword {
    pub(crate) fn generate() -> Self {
        Self(veil_crypto::random::one_time_password())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OneTimePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimePassword([redacted])")
    }
}

#[derive(Debug)]
pub struct LoginOutcome {
    pub token: TokenSecret,
    pub expires_at: i64,
    pub user: User,
}

/// Audit actor for requests without an authenticated user.
pub(crate) const ANONYMOUS: &str = "anonymous";
/// Audit actor for the node's own actions (bootstrap).
pub(crate) const SYSTEM: &str = "system";

impl Core {
    /// Prepares the store for use: writes the preset roles as defined by this version and
    /// ends the requests the node's last stop interrupted.
    pub async fn init(&self) -> Result<()> {
        let presets: Vec<NewRole> = PresetRole::ALL
            .iter()
            .map(|r| NewRole {
                name: r.name().to_string(),
                description: r.description().to_string(),
                permissions: r.permissions(),
            })
            .collect();
        self.store.sync_preset_roles(&presets).await?;
        // A store that cannot end them now is asked again at the next start; the node still
        // starts.
        if let Err(e) = self.end_interrupted_requests().await {
            tracing::error!(error = %e, "could not end the requests the last stop interrupted");
        }
        Ok(())
    }

    /// Creates the owner account if the node has no users yet. Uses `password` if given
    /// (it must pass the policy), otherwise generates a one-time password, returned so the
    /// binary can print it once.
    pub async fn bootstrap_owner(
        &self,
        email: &str,
        password: Option<&str>,
    ) -> Result<Option<OneTimePassword>> {
        if !self.store.list_users().await?.is_empty() {
            return Ok(None);
        }
        let email = Email::parse(email).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let (password, otp) = match password {
            Some(p) => {
                self.settings.password_policy.check(p, email.as_str())?;
                (p.to_string(), None)
            }
            None => {
                let otp = OneTimePassword::generate();
                (otp.expose().to_string(), Some(otp))
            }
        };
        let must_change = otp.is_some();
        let hash = self.hash_password(password).await?;
        self.store
            .create_user(
                &NewUser {
                    email: email.to_string(),
                    role: PresetRole::Owner.name().to_string(),
                    password_hash: hash,
                    must_change_password: must_change,
                },
                NewAuditEntry::new(SYSTEM, "user.create", format!("user:{email}")).details(
                    json!({"role": "owner", "bootstrap": true, "one_time_password": must_change}),
                ),
            )
            .await?;
        Ok(otp)
    }

    pub(crate) async fn hash_password(&self, password: String) -> Result<String> {
        let password = Zeroizing::new(password);
        self.hashing(move || veil_crypto::hash_password(&password))
            .await?
            .map_err(|e| CoreError::Internal(e.to_string()))
    }

    async fn verify_password(&self, password: String, phc: String) -> Result<bool> {
        let password = Zeroizing::new(password);
        self.hashing(move || veil_crypto::verify_password(&password, &phc).unwrap_or(false))
            .await
    }

    /// Checks an email and password and opens a session.
    ///
    /// Unknown emails, disabled accounts and wrong passwords all give the same error after
    /// the same amount of work, so the response does not reveal which accounts exist.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client_ip: &str,
    ) -> Result<LoginOutcome> {
        let now = self.now();
        let normalized = truncate(email.trim(), 254).to_ascii_lowercase();
        let target = format!("user:{normalized}");
        if let Err(throttled) = self.login_throttle.check(&normalized, client_ip, now) {
            self.record_denial(
                &format!("auth.login throttled {}", throttled.key),
                NewAuditEntry::new(ANONYMOUS, "auth.login", target)
                    .outcome(AuditOutcome::Denied)
                    .details(json!({"reason": "rate_limited", "ip": client_ip})),
            )
            .await?;
            return Err(CoreError::RateLimited {
                retry_after_secs: throttled.retry_after_secs,
            });
        }

        let user = match Email::parse(email) {
            Ok(e) => self.store.get_user_by_email(e.as_str()).await?,
            Err(_) => None,
        };
        let phc = match &user {
            Some(u) => self.store.get_password_hash(u.id).await?,
            None => None,
        };
        let phc = phc.unwrap_or_else(|| veil_crypto::password::dummy_hash().to_string());
        let password_ok = self.verify_password(password.to_string(), phc).await?;

        let user = match user {
            Some(u) if password_ok && !u.disabled => u,
            other => {
                let reason = match other {
                    None => "unknown_user",
                    Some(u) if u.disabled => "disabled",
                    Some(_) => "wrong_password",
                };
                self.login_throttle.failed(&normalized, client_ip, now);
                self.store
                    .append_audit(
                        NewAuditEntry::new(ANONYMOUS, "auth.login", target)
                            .outcome(AuditOutcome::Denied)
                            .details(json!({"reason": reason, "ip": client_ip})),
                    )
                    .await?;
                return Err(CoreError::InvalidCredentials);
            }
        };

        self.login_throttle.succeeded(&normalized, client_ip, now);
        let secret = TokenSecret::generate();
        let expires_at = now.saturating_add(micros(self.settings.session_ttl));
        self.store
            .create_token(
                &NewToken {
                    id: secret.id().to_string(),
                    user_id: user.id,
                    kind: TokenKind::Session,
                    name: None,
                    secret_hash: secret.hash(),
                    expires_at: Some(expires_at),
                },
                NewAuditEntry::new(&user.email, "auth.login", format!("user:{}", user.email))
                    .details(json!({"ip": client_ip, "session": secret.id()})),
            )
            .await?;
        Ok(LoginOutcome {
            token: secret,
            expires_at,
            user,
        })
    }

    /// Resolves a bearer token to the caller. Every failure is the same `Unauthenticated`.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let parsed = ParsedToken::parse(bearer).map_err(|_| CoreError::Unauthenticated)?;
        let found = self
            .store
            .get_token_principal(parsed.id())
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        let now = self.now();
        if !parsed.matches(&found.token.secret_hash)
            || !found.token.is_active(now)
            || found.user.disabled
        {
            return Err(CoreError::Unauthenticated);
        }
        if found
            .token
            .last_used_at
            .is_none_or(|t| now - t > TOUCH_INTERVAL_MICROS)
            && let Err(e) = self.store.touch_token(&found.token.id, now).await
        {
            // Bookkeeping only: never fail a request over it.
            tracing::warn!(error = %e, "could not record token use");
        }
        Ok(Principal {
            user: found.user,
            permissions: found.permissions,
            token_id: found.token.id,
            token_kind: found.token.kind,
        })
    }

    /// Ends the session (or revokes the API token) the request came with.
    pub async fn logout(&self, p: &Principal) -> Result<()> {
        p.ensure_authenticated()?;
        self.store
            .revoke_token(
                p.user.id,
                &p.token_id,
                NewAuditEntry::new(p.email(), "auth.logout", format!("token:{}", p.token_id)),
            )
            .await?;
        Ok(())
    }

    /// Changes the caller's own password. Other sessions are ended; this one stays.
    pub async fn change_password(&self, p: &Principal, current: &str, new: &str) -> Result<()> {
        p.ensure_authenticated()?;
        let phc = self
            .store
            .get_password_hash(p.user.id)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        if !self.verify_password(current.to_string(), phc).await? {
            self.store
                .append_audit(
                    NewAuditEntry::new(p.email(), "user.password", format!("user:{}", p.email()))
                        .outcome(AuditOutcome::Denied)
                        .details(json!({"reason": "wrong_current_password"})),
                )
                .await?;
            return Err(CoreError::InvalidCredentials);
        }
        if current == new {
            return Err(CoreError::WeakPassword(
                "the new password must differ from the current one".into(),
            ));
        }
        self.settings.password_policy.check(new, p.email())?;
        let hash = self.hash_password(new.to_string()).await?;
        self.store
            .set_password(
                p.user.id,
                &PasswordChange {
                    password_hash: hash,
                    must_change_password: false,
                    revokes: Revokes::OtherSessions {
                        keep: Some(p.token_id.clone()),
                    },
                },
                NewAuditEntry::new(p.email(), "user.password", format!("user:{}", p.email())),
            )
            .await?;
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
impl Core {
    /// Re-reads a session by id, as `authenticate` would, for tests that hold only the id.
    pub(crate) async fn authenticate_by_id_for_tests(&self, token_id: &str) -> Result<Principal> {
        let found = self
            .store
            .get_token_principal(token_id)
            .await?
            .ok_or(CoreError::Unauthenticated)?;
        if !found.token.is_active(self.now()) || found.user.disabled {
            return Err(CoreError::Unauthenticated);
        }
        Ok(Principal {
            user: found.user,
            permissions: found.permissions,
            token_id: found.token.id,
            token_kind: found.token.kind,
        })
    }
}

impl Core {
    /// Creates `email` with `role` if it does not exist yet, acting as the node itself (for
    /// `serve --demo`). Returns the one-time password when the user was created now.
    pub async fn bootstrap_user(&self, email: &str, role: &str) -> Result<Option<OneTimePassword>> {
        let email = Email::parse(email).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if self
            .store
            .get_user_by_email(email.as_str())
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let audit = NewAuditEntry::new(SYSTEM, "user.create", format!("user:{email}"))
            .details(json!({"role": role, "bootstrap": true, "one_time_password": true}));
        let (_, otp) = self
            .insert_with_one_time_password(&email, role, audit)
            .await?;
        Ok(Some(otp))
    }

    /// Sets `email`'s overall budget, acting as the node itself (for `serve --demo`).
    pub async fn bootstrap_budget(&self, email: &str, epsilon: f64, delta: f64) -> Result<()> {
        let user = self
            .store
            .get_user_by_email(&email.to_ascii_lowercase())
            .await?
            .ok_or(CoreError::NotFound(crate::error::NotFound::User))?;
        let invalid = |e: veil_types::PrivacyAmountError| CoreError::InvalidInput(e.to_string());
        let cap = veil_store::BudgetCap {
            user_id: user.id,
            dataset: None,
            epsilon: veil_types::Epsilon::cap_from_f64(epsilon).map_err(invalid)?,
            delta: veil_types::Delta::cap_from_f64(delta).map_err(invalid)?,
        };
        self.store
            .set_budget(
                &cap,
                NewAuditEntry::new(SYSTEM, "budget.set", format!("user:{}", user.email))
                    .details(json!({"epsilon": cap.epsilon.to_string(), "delta": cap.delta.to_string(), "bootstrap": true})),
            )
            .await?;
        Ok(())
    }
}
