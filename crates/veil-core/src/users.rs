//! Managing user accounts.

use serde_json::json;
use veil_store::{NewAuditEntry, NewUser, PasswordChange, Revokes, User, UserUpdate};
use veil_types::{Email, Permission, PermissionSet, PresetRole, RoleName};

use crate::auth::OneTimePassword;
use crate::error::{Conflict, NotFound};
use crate::{Core, CoreError, Principal, Result};

/// A user named by numeric id or by email (the CLI and the API accept either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(i64),
    Email(String),
}

impl UserRef {
    pub fn parse(s: &str) -> Self {
        match s.parse::<i64>() {
            Ok(id) => UserRef::Id(id),
            Err(_) => UserRef::Email(s.trim().to_ascii_lowercase()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct UserUpdateRequest {
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

impl Core {
    pub(crate) async fn resolve_user(&self, r: &UserRef) -> Result<User> {
        match r {
            UserRef::Id(id) => self.store.get_user(*id).await?,
            UserRef::Email(e) => self.store.get_user_by_email(e).await?,
        }
        .ok_or(CoreError::NotFound(NotFound::User))
    }

    pub(crate) async fn role_permissions(&self, role: &str) -> Result<PermissionSet> {
        Ok(self
            .store
            .get_role(role)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Role))?
            .permissions)
    }

    /// Creates a user with a generated one-time password, which they must change at first
    /// login. The caller must hold every permission of the role they assign.
    pub async fn create_user(
        &self,
        p: &Principal,
        email: &str,
        role: &str,
    ) -> Result<(User, OneTimePassword)> {
        p.require(Permission::UsersManage)?;
        let email = Email::parse(email).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let role = RoleName::parse(role).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        p.ensure_can_grant(&self.role_permissions(role.as_str()).await?)?;
        self.insert_with_one_time_password(
            &email,
            role.as_str(),
            NewAuditEntry::new(p.email(), "user.create", format!("user:{email}"))
                .details(json!({"role": role.as_str()})),
        )
        .await
    }

    /// Stores a new user whose password is a fresh one-time password (to be replaced at first
    /// login), with `audit` written in the same transaction.
    pub(crate) async fn insert_with_one_time_password(
        &self,
        email: &Email,
        role: &str,
        audit: NewAuditEntry,
    ) -> Result<(User, OneTimePassword)> {
        let otp = OneTimePassword::generate();
        let hash = self.hash_password(otp.expose().to_string()).await?;
        let user = self
            .store
            .create_user(
                &NewUser {
                    email: email.to_string(),
                    role: role.to_string(),
                    password_hash: hash,
                    must_change_password: true,
                },
                audit,
            )
            .await?;
        Ok((user, otp))
    }

    pub async fn list_users(&self, p: &Principal) -> Result<Vec<User>> {
        p.require(Permission::UsersRead)?;
        Ok(self.store.list_users().await?)
    }

    /// Anyone may look themselves up; looking up others needs `users:read`.
    pub async fn get_user(&self, p: &Principal, r: &UserRef) -> Result<User> {
        p.ensure_active()?;
        let is_self = match r {
            UserRef::Id(id) => *id == p.user.id,
            UserRef::Email(e) => *e == p.user.email,
        };
        if !is_self {
            p.require(Permission::UsersRead)?;
        }
        self.resolve_user(r).await
    }

    /// Changes a user's role or disabled flag.
    ///
    /// Rules: the caller must hold every permission of the user's current role and of the
    /// new one (no promoting past yourself, no demoting someone above you); nobody changes
    /// or disables their own account; the last enabled owner stays.
    pub async fn update_user(
        &self,
        p: &Principal,
        r: &UserRef,
        req: &UserUpdateRequest,
    ) -> Result<User> {
        p.require(Permission::UsersManage)?;
        let target = self.resolve_user(r).await?;
        if target.id == p.user.id {
            return Err(CoreError::Conflict(Conflict::SelfAction(
                "change the role of or disable",
            )));
        }
        p.ensure_can_grant(&self.role_permissions(&target.role).await?)?;
        let new_role = match &req.role {
            Some(role) => {
                let role =
                    RoleName::parse(role).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
                p.ensure_can_grant(&self.role_permissions(role.as_str()).await?)?;
                Some(role.to_string())
            }
            None => None,
        };
        let owner = PresetRole::Owner.name();
        let leaves_owner_role = target.role == owner
            && !target.disabled
            && (req.disabled == Some(true) || new_role.as_deref().is_some_and(|r| r != owner));
        if leaves_owner_role && self.store.count_enabled_users_with_role(owner).await? <= 1 {
            return Err(CoreError::Conflict(Conflict::LastOwner));
        }
        let action = match req.disabled {
            Some(true) => "user.disable",
            Some(false) => "user.enable",
            None => "user.update",
        };
        let mut details = json!({});
        if let Some(role) = &new_role {
            details["role"] = json!({"from": target.role, "to": role});
        }
        if let Some(d) = req.disabled {
            details["disabled"] = json!(d);
        }
        Ok(self
            .store
            .update_user(
                target.id,
                &UserUpdate {
                    role: new_role,
                    disabled: req.disabled,
                },
                NewAuditEntry::new(p.email(), action, format!("user:{}", target.email))
                    .details(details),
            )
            .await?)
    }

    /// Replaces a user's password with a new one-time password and ends every session and API
    /// token they hold.
    pub async fn reset_password(&self, p: &Principal, r: &UserRef) -> Result<OneTimePassword> {
        p.require(Permission::UsersManage)?;
        let target = self.resolve_user(r).await?;
        p.ensure_can_grant(&self.role_permissions(&target.role).await?)?;
        let otp = OneTimePassword::generate();
        let hash = self.hash_password(otp.expose().to_string()).await?;
        self.store
            .set_password(
                target.id,
                &PasswordChange {
                    password_hash: hash,
                    must_change_password: true,
                    revokes: Revokes::Everything,
                },
                NewAuditEntry::new(
                    p.email(),
                    "user.password_reset",
                    format!("user:{}", target.email),
                ),
            )
            .await?;
        Ok(otp)
    }
}
