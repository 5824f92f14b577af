//! Named API tokens for scripts.

use std::time::Duration;

use serde_json::json;
use veil_crypto::TokenSecret;
use veil_store::Timestamp;
use veil_store::{NewAuditEntry, NewToken, TokenKind, TokenRecord};
use veil_types::TokenName;
use veil_types::UserId;

use crate::{Core, CoreError, Principal, Result, micros};

/// A token as its owner may see it: everything the store keeps but the secret's hash, which
/// never leaves `veil-core` (it is only ever compared, in authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub user_id: UserId,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl Token {
    /// Neither revoked nor expired at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

impl From<TokenRecord> for Token {
    fn from(t: TokenRecord) -> Self {
        let TokenRecord {
            id,
            user_id,
            kind,
            name,
            secret_hash: _,
            created_at,
            expires_at,
            revoked_at,
            last_used_at,
        } = t;
        Token {
            id,
            user_id,
            kind,
            name,
            created_at,
            expires_at,
            revoked_at,
            last_used_at,
        }
    }
}

impl Core {
    /// Creates an API token for the caller. It carries the caller's permissions (through
    /// their role) and can be revoked on its own. `ttl: None` means the node's longest
    /// lifetime, or no expiry if the node sets none.
    pub async fn create_api_token(
        &self,
        p: &Principal,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(Token, TokenSecret)> {
        p.ensure_active()?;
        let name = TokenName::parse(name).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(CoreError::InvalidInput(
                "a token lifetime must be positive".into(),
            ));
        }
        let ttl = match (ttl, self.settings.max_token_ttl) {
            (Some(t), Some(max)) if t > max => {
                return Err(CoreError::InvalidInput(format!(
                    "the longest token lifetime allowed is {} days",
                    max.as_secs() / 86_400
                )));
            }
            (None, max) => max,
            (Some(t), _) => Some(t),
        };
        let secret = TokenSecret::generate();
        let expires_at = ttl.map(|t| self.now().saturating_add(micros(t)));
        let record = self
            .store
            .create_token(
                &NewToken {
                    id: secret.id().to_string(),
                    user_id: p.user.id,
                    kind: TokenKind::Api,
                    name: Some(name.to_string()),
                    secret_hash: secret.hash(),
                    expires_at,
                },
                NewAuditEntry::new(p.email(), "token.create", format!("token:{}", secret.id()))
                    .details(json!({"name": name.as_str(), "expires_at": expires_at})),
            )
            .await?;
        Ok((record.into(), secret))
    }

    /// The caller's own tokens (sessions and API tokens), including revoked and expired ones.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<Token>> {
        p.ensure_active()?;
        let tokens = self.store.list_tokens(p.user.id).await?;
        Ok(tokens.into_iter().map(Token::from).collect())
    }

    /// Revokes one of the caller's own tokens by id.
    pub async fn revoke_token(&self, p: &Principal, token_id: &str) -> Result<()> {
        p.ensure_active()?;
        self.store
            .revoke_token(
                p.user.id,
                token_id,
                NewAuditEntry::new(p.email(), "token.revoke", format!("token:{token_id}")),
            )
            .await?;
        Ok(())
    }
}
