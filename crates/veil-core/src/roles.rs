//! Preset and custom roles.

use serde_json::json;
use veil_store::{NewAuditEntry, NewRole, Role};
use veil_types::{Permission, PermissionSet, PresetRole, RoleName};

use crate::error::{Conflict, NotFound};
use crate::{Core, CoreError, Principal, Result};

impl Core {
    pub async fn list_roles(&self, p: &Principal) -> Result<Vec<Role>> {
        p.require(Permission::RolesRead)?;
        Ok(self.store.list_roles().await?)
    }

    pub async fn get_role(&self, p: &Principal, name: &str) -> Result<Role> {
        p.require(Permission::RolesRead)?;
        self.store
            .get_role(name)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Role))
    }

    /// Creates a custom role. The caller must hold every permission they put in it.
    pub async fn create_role(
        &self,
        p: &Principal,
        name: &str,
        permissions: &PermissionSet,
        description: &str,
    ) -> Result<Role> {
        p.require(Permission::RolesManage)?;
        let name = RoleName::parse(name).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        if PresetRole::from_name(name.as_str()).is_some() {
            return Err(CoreError::Conflict(Conflict::PresetRole));
        }
        if description.chars().count() > 500 || description.chars().any(char::is_control) {
            return Err(CoreError::InvalidInput(
                "a role description is at most 500 characters, without control characters".into(),
            ));
        }
        p.ensure_can_grant(permissions)?;
        Ok(self
            .store
            .create_role(
                &NewRole {
                    name: name.to_string(),
                    description: description.to_string(),
                    permissions: permissions.clone(),
                },
                NewAuditEntry::new(p.email(), "role.create", format!("role:{name}"))
                    .details(json!({"permissions": permissions.to_names()})),
            )
            .await?)
    }

    /// Deletes a custom role nobody holds. Deleting a role is also a grant-level action: the
    /// caller must hold its permissions.
    pub async fn delete_role(&self, p: &Principal, name: &str) -> Result<()> {
        p.require(Permission::RolesManage)?;
        if PresetRole::from_name(name).is_some() {
            return Err(CoreError::Conflict(Conflict::PresetRole));
        }
        let role = self
            .store
            .get_role(name)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Role))?;
        p.ensure_can_grant(&role.permissions)?;
        self.store
            .delete_role(
                name,
                NewAuditEntry::new(p.email(), "role.delete", format!("role:{name}"))
                    .details(json!({"permissions": role.permissions.to_names()})),
            )
            .await?;
        Ok(())
    }
}
