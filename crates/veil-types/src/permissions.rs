//! Permissions and the seven preset roles.
//!
//! A permission names one kind of action (`users:manage`, `queries:run`, …). A role is a named
//! set of permissions; the preset roles below come from PRODUCT.md and cannot be edited or
//! deleted. Custom roles are stored by name with their permission set. Access is denied by
//! default: an action is allowed only if the caller's role holds its permission.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! permissions {
    ($( #[doc = $doc:literal] $variant:ident => $name:literal, )+) => {
        /// One kind of action a caller may be allowed to take.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Permission {
            $( #[doc = $doc] $variant, )+
        }

        impl Permission {
            /// Every permission, in declaration order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)+];

            /// The stable wire name, e.g. `users:manage`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Permission::$variant => $name, )+
                }
            }

            /// What the permission allows, in one sentence.
            pub fn description(self) -> &'static str {
                match self {
                    $( Permission::$variant => $doc.trim(), )+
                }
            }
        }

        impl FromStr for Permission {
            type Err = UnknownPermission;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim() {
                    $( $name => Ok(Permission::$variant), )+
                    other => Err(UnknownPermission(other.to_string())),
                }
            }
        }
    };
}

permissions! {
    /// See the user list and any user's profile.
    UsersRead => "users:read",
    /// Create users, change their role, disable them, reset passwords.
    UsersManage => "users:manage",
    /// See roles and their permissions.
    RolesRead => "roles:read",
    /// Create and delete custom roles.
    RolesManage => "roles:manage",
    /// See any user's budgets and ledger (everyone may see their own).
    BudgetsRead => "budgets:read",
    /// Set budget caps.
    BudgetsManage => "budgets:manage",
    /// Read and verify the audit log.
    AuditRead => "audit:read",
    /// Browse the dataset catalogue: names, descriptions, schemas.
    DatasetsReadMetadata => "datasets:read-metadata",
    /// Draw synthetic rows from a dataset's declared schema.
    DatasetsMock => "datasets:mock",
    /// Upload and delete datasets, set their policies.
    DatasetsManage => "datasets:manage",
    /// Run differentially private queries.
    QueriesRun => "queries:run",
    /// See the model catalogue.
    ModelsRead => "models:read",
    /// Upload and manage one's own models.
    ModelsManage => "models:manage",
    /// Publish models for encrypted inference.
    ModelsPublish => "models:publish",
    /// Validate a model on a private dataset.
    ModelsValidate => "models:validate",
    /// Run encrypted inference on published models.
    FheInfer => "fhe:infer",
    /// Submit requests that may need review.
    RequestsSubmit => "requests:submit",
    /// Approve or deny other people's requests.
    RequestsReview => "requests:review",
    /// Submit sandboxed code jobs.
    JobsSubmit => "jobs:submit",
    /// Change node settings.
    SettingsManage => "settings:manage",
    /// Read the node's operational metrics (request counts, failures, latencies), which depend on what runs over private data.
    MetricsRead => "metrics:read",
    /// Owner-only: node keys (master key rotation, signing keys of the node).
    NodeKeys => "node:keys",
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission {0:?}")]
pub struct UnknownPermission(pub String);

/// A set of permissions. Ordered, so listings and hashes are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        Permission::ALL.iter().copied().collect()
    }

    pub fn contains(&self, p: Permission) -> bool {
        self.0.contains(&p)
    }

    pub fn is_subset(&self, other: &PermissionSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The permissions in `self` that `other` lacks (for "you cannot grant X" messages).
    pub fn missing_from(&self, other: &PermissionSet) -> Vec<Permission> {
        self.0.difference(&other.0).copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a comma-separated list such as `audit:read,datasets:read-metadata`.
    pub fn parse_list(s: &str) -> Result<Self, UnknownPermission> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }

    pub fn to_names(&self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_string()).collect()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Permission::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// The preset roles of PRODUCT.md. Their permission sets are fixed in code so that an upgrade
/// can widen or narrow them in one reviewed place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresetRole {
    Owner,
    Administrator,
    ComplianceOfficer,
    DataScientist,
    ModelCreator,
    DataUser,
    Guest,
}

impl PresetRole {
    pub const ALL: &'static [PresetRole] = &[
        PresetRole::Owner,
        PresetRole::Administrator,
        PresetRole::ComplianceOfficer,
        PresetRole::DataScientist,
        PresetRole::ModelCreator,
        PresetRole::DataUser,
        PresetRole::Guest,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PresetRole::Owner => "owner",
            PresetRole::Administrator => "administrator",
            PresetRole::ComplianceOfficer => "compliance-officer",
            PresetRole::DataScientist => "data-scientist",
            PresetRole::ModelCreator => "model-creator",
            PresetRole::DataUser => "data-user",
            PresetRole::Guest => "guest",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    pub const fn description(self) -> &'static str {
        match self {
            PresetRole::Owner => "everything, including keys and node settings",
            PresetRole::Administrator => "manage users, roles, budgets, datasets, settings",
            PresetRole::ComplianceOfficer => "review and approve/deny requests; read the audit log",
            PresetRole::DataScientist => {
                "browse datasets and mock data, run DP queries, upload their own models and submit them for validation, submit jobs"
            }
            PresetRole::ModelCreator => {
                "upload and manage own models, publish them for encrypted inference"
            }
            PresetRole::DataUser => "run encrypted inference on published models",
            PresetRole::Guest => "browse the catalogue (dataset names, descriptions, schemas)",
        }
    }

    pub fn permissions(self) -> PermissionSet {
        use Permission::*;
        let list: &[Permission] = match self {
            PresetRole::Owner => Permission::ALL,
            PresetRole::Administrator => &[
                UsersRead,
                UsersManage,
                RolesRead,
                RolesManage,
                BudgetsRead,
                BudgetsManage,
                DatasetsReadMetadata,
                DatasetsMock,
                DatasetsManage,
                ModelsRead,
                SettingsManage,
                MetricsRead,
            ],
            PresetRole::ComplianceOfficer => &[
                AuditRead,
                RequestsReview,
                UsersRead,
                RolesRead,
                BudgetsRead,
                DatasetsReadMetadata,
                ModelsRead,
            ],
            PresetRole::DataScientist => &[
                DatasetsReadMetadata,
                DatasetsMock,
                QueriesRun,
                ModelsRead,
                // Their own models, private to them and reviewers; publishing stays with
                // model creators (`models:publish`).
                ModelsManage,
                ModelsValidate,
                RequestsSubmit,
                JobsSubmit,
            ],
            PresetRole::ModelCreator => &[ModelsRead, ModelsManage, ModelsPublish],
            PresetRole::DataUser => &[ModelsRead, FheInfer],
            PresetRole::Guest => &[DatasetsReadMetadata],
        };
        list.iter().copied().collect()
    }
}

impl fmt::Display for PresetRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_round_trips_through_its_name() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(*p));
        }
        assert!("users:everything".parse::<Permission>().is_err());
    }

    #[test]
    fn owner_holds_every_permission_and_only_owner_holds_node_keys() {
        assert_eq!(PresetRole::Owner.permissions(), PermissionSet::all());
        for role in PresetRole::ALL.iter().filter(|r| **r != PresetRole::Owner) {
            assert!(!role.permissions().contains(Permission::NodeKeys), "{role}");
            assert!(
                role.permissions()
                    .is_subset(&PresetRole::Owner.permissions())
            );
        }
    }

    #[test]
    fn parse_list_accepts_spaces_and_rejects_unknown() {
        let set = PermissionSet::parse_list("audit:read, datasets:read-metadata").expect("valid");
        assert_eq!(set.to_string(), "audit:read,datasets:read-metadata");
        assert_eq!(
            PermissionSet::parse_list("audit:read,audit:write"),
            Err(UnknownPermission("audit:write".into()))
        );
    }

    #[test]
    fn missing_from_names_what_cannot_be_granted() {
        let ds = PresetRole::DataScientist.permissions();
        let admin = PresetRole::Administrator.permissions();
        let missing = ds.missing_from(&admin);
        assert!(missing.contains(&Permission::QueriesRun));
        assert!(!missing.contains(&Permission::DatasetsMock));
    }
}
