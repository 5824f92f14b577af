//! Named API tokens for scripts.

use std::time::Duration;

use serde_json::json;
use veil_crypto::TokenSecret;
use veil_store::{NewAuditEntry, NewToken, TokenKind, TokenRecord};
use veil_types::TokenName;

use crate::{Core, CoreError, Principal, Result, micros};

impl Core {
    /// Creates an API token for the caller. It carries the caller's permissions (through
    /// their role) and can be revoked on its own. `ttl: None` means no expiry, if the node
    /// allows that.
    pub async fn create_api_token(
        &self,
        p: &Principal,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(TokenRecord, TokenSecret)> {
        p.ensure_active()?;
        let name = TokenName::parse(name).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(CoreError::InvalidInput(
                "a token lifetime must be positive".into(),
            ));
        }
        if let Some(max) = self.settings.max_token_ttl {
            match ttl {
                None => {
                    return Err(CoreError::InvalidInput(format!(
                        "this node requires tokens to expire within {} days",
                        max.as_secs() / 86_400
                    )));
                }
                Some(t) if t > max => {
                    return Err(CoreError::InvalidInput(format!(
                        "the longest token lifetime allowed is {} days",
                        max.as_secs() / 86_400
                    )));
                }
                Some(_) => {}
            }
        }
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
        Ok((record, secret))
    }

    /// The caller's own tokens (sessions and API tokens), including revoked and expired ones.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<TokenRecord>> {
        p.ensure_active()?;
        Ok(self.store.list_tokens(p.user.id).await?)
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
