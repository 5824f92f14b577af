//! The authenticated caller of a use-case.

use veil_store::{TokenKind, User};
use veil_types::{Permission, PermissionSet};

use crate::CoreError;

/// Who is calling, as established by [`crate::Core::authenticate`]. Permissions are read from
/// the user's role on every request, so a role change takes effect immediately.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub permissions: PermissionSet,
    /// The id (not the secret) of the token the request came with.
    pub token_id: String,
    pub token_kind: TokenKind,
}

impl Principal {
    pub fn email(&self) -> &str {
        &self.user.email
    }

    /// Allows the few actions a user with a one-time password may take (see who they are,
    /// change the password, log out).
    pub fn ensure_authenticated(&self) -> Result<(), CoreError> {
        Ok(())
    }

    /// Allows self-service actions: any user who has set their own password.
    pub fn ensure_active(&self) -> Result<(), CoreError> {
        if self.user.must_change_password {
            Err(CoreError::PasswordChangeRequired)
        } else {
            Ok(())
        }
    }

    /// Allows the action only if the caller's role holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), CoreError> {
        self.ensure_active()?;
        if self.permissions.contains(p) {
            Ok(())
        } else {
            Err(CoreError::Forbidden(p))
        }
    }

    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }

    /// Refuses to hand out any permission the caller does not hold themselves.
    pub fn ensure_can_grant(&self, granted: &PermissionSet) -> Result<(), CoreError> {
        let missing = granted.missing_from(&self.permissions);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CoreError::PrivilegeEscalation { missing })
        }
    }
}
