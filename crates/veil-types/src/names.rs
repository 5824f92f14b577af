//! Validated names: emails, role names, token names, dataset names.
//!
//! Each is a newtype whose only constructor validates, so code that holds a `RoleName` never
//! has to wonder whether it is safe to put in a path, a log line or a table cell.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid email address {0:?}")]
    Email(String),
    #[error(
        "invalid {kind} name {value:?}: use 1-{max} characters: lowercase letters, digits, '-' and '_', starting with a letter"
    )]
    Name {
        kind: &'static str,
        value: String,
        max: usize,
    },
}

/// A normalised (trimmed, lowercased) email address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let s = raw.trim().to_ascii_lowercase();
        let bad = || NameError::Email(raw.to_string());
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let domain_ok = !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        if domain_ok && local_ok {
            Ok(Self(s))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Email::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn valid_slug(s: &str, max: usize) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= max
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

macro_rules! slug_name {
    ($name:ident, $kind:literal, $max:expr) => {
        #[doc = concat!("A validated ", $kind, " name.")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, NameError> {
                if valid_slug(raw, $max) {
                    Ok(Self(raw.to_string()))
                } else {
                    Err(NameError::Name {
                        kind: $kind,
                        value: raw.to_string(),
                        max: $max,
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_name!(RoleName, "role", 64);
slug_name!(TokenName, "token", 64);
slug_name!(DatasetName, "dataset", 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            Email::parse("  Ana@Lab.ORG ").map(|e| e.to_string()),
            Ok("ana@lab.org".into())
        );
        assert!(Email::parse("owner@localhost").is_ok());
        for bad in [
            "",
            "ana",
            "@lab.org",
            "ana@",
            "ana@@lab.org",
            "a na@lab.org",
            "ana@lab..org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn slugs_reject_paths_and_uppercase() {
        assert!(RoleName::parse("auditor").is_ok());
        assert!(RoleName::parse("data-scientist_2").is_ok());
        for bad in ["", "Auditor", "../etc", "1role", "a b", &"x".repeat(65)] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
