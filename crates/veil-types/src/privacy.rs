//! Privacy amounts (ε, δ) as exact integers.
//!
//! Budgets are debited many times; adding `f64`s drifts, and a drift that lets a user spend
//! 5.0000001 of a 5.0 budget is a real (if tiny) privacy leak. So ε is stored in millionths
//! ("micro-ε") and δ in 10⁻¹⁵ units ("femto-δ"), both as `u64`. Converting a requested cost
//! from a float rounds *up* (a cost is never under-charged); converting a cap rounds *down*.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Units of ε per 1.0.
pub const EPSILON_SCALE: u64 = 1_000_000;
/// Units of δ per 1.0.
pub const DELTA_SCALE: u64 = 1_000_000_000_000_000;
/// The largest ε a single budget may hold. Far above anything meaningful (ε = 10 is already
/// weak protection) but small enough that sums of many costs can never overflow `u64`.
pub const MAX_EPSILON: f64 = 1_000_000.0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivacyAmountError {
    #[error("{what} must be a finite number, got {value}")]
    NotFinite { what: &'static str, value: String },
    #[error("{what} must not be negative, got {value}")]
    Negative { what: &'static str, value: String },
    #[error("{what} is too large: {value} (at most {max})")]
    TooLarge {
        what: &'static str,
        value: String,
        max: String,
    },
    #[error("{what} is not a number: {value:?}")]
    NotANumber { what: &'static str, value: String },
    #[error("{what} {value} is smaller than the smallest representable amount")]
    TooSmall { what: &'static str, value: String },
}

/// Rounding direction when converting a float amount into integer units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// For costs: never charge less than asked.
    Up,
    /// For caps: never grant more than asked.
    Down,
}

fn to_units(
    what: &'static str,
    value: f64,
    scale: u64,
    max: f64,
    rounding: Rounding,
) -> Result<u64, PrivacyAmountError> {
    if !value.is_finite() {
        return Err(PrivacyAmountError::NotFinite {
            what,
            value: value.to_string(),
        });
    }
    if value < 0.0 {
        return Err(PrivacyAmountError::Negative {
            what,
            value: value.to_string(),
        });
    }
    if value > max {
        return Err(PrivacyAmountError::TooLarge {
            what,
            value: value.to_string(),
            max: max.to_string(),
        });
    }
    let scaled = value * scale as f64;
    let units = match rounding {
        Rounding::Up => scaled.ceil(),
        Rounding::Down => scaled.floor(),
    };
    // `max * scale` is below 2^63 for both amounts, so this cast cannot saturate.
    let units = units as u64;
    if value > 0.0 && units == 0 && rounding == Rounding::Up {
        // Unreachable with ceil(), kept as a guard should the rounding ever change.
        return Err(PrivacyAmountError::TooSmall {
            what,
            value: value.to_string(),
        });
    }
    Ok(units)
}

fn fmt_units(f: &mut fmt::Formatter<'_>, units: u64, scale: u64) -> fmt::Result {
    let whole = units / scale;
    let frac = units % scale;
    if frac == 0 {
        return write!(f, "{whole}");
    }
    let digits = scale.ilog10() as usize;
    let frac = format!("{frac:0digits$}");
    write!(f, "{whole}.{}", frac.trim_end_matches('0'))
}

macro_rules! privacy_amount {
    ($name:ident, $what:literal, $scale:expr, $max:expr) => {
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[doc = concat!("An amount of ", $what, " in exact integer units.")]
        pub struct $name(u64);

        impl $name {
            pub const ZERO: Self = Self(0);
            /// Integer units per 1.0.
            pub const SCALE: u64 = $scale;

            pub const fn from_units(units: u64) -> Self {
                Self(units)
            }

            pub const fn units(self) -> u64 {
                self.0
            }

            /// Converts a cost, rounding up so it is never under-charged.
            pub fn cost_from_f64(value: f64) -> Result<Self, PrivacyAmountError> {
                to_units($what, value, $scale, $max, Rounding::Up).map(Self)
            }

            /// Converts a cap, rounding down so it never grants more than asked.
            pub fn cap_from_f64(value: f64) -> Result<Self, PrivacyAmountError> {
                to_units($what, value, $scale, $max, Rounding::Down).map(Self)
            }

            pub fn as_f64(self) -> f64 {
                self.0 as f64 / $scale as f64
            }

            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.0.checked_add(other.0).map(Self)
            }

            pub fn saturating_sub(self, other: Self) -> Self {
                Self(self.0.saturating_sub(other.0))
            }

            pub fn is_zero(self) -> bool {
                self.0 == 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_units(f, self.0, $scale)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = PrivacyAmountError;

            /// Parses a decimal or scientific literal ("0.5", "1e-6") as a cost (rounded up).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let value: f64 = s
                    .trim()
                    .parse()
                    .map_err(|_| PrivacyAmountError::NotANumber {
                        what: $what,
                        value: s.to_string(),
                    })?;
                Self::cost_from_f64(value)
            }
        }

        // On the wire amounts are plain JSON numbers: clients think in ε = 0.5, not 500000.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.as_f64())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = f64::deserialize(d)?;
                Self::cost_from_f64(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

privacy_amount!(Epsilon, "epsilon", EPSILON_SCALE, MAX_EPSILON);
privacy_amount!(Delta, "delta", DELTA_SCALE, 1.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_round_up_and_caps_round_down() {
        assert_eq!(Epsilon::cost_from_f64(0.1).map(Epsilon::units), Ok(100_000));
        assert_eq!(Epsilon::cost_from_f64(1e-9).map(Epsilon::units), Ok(1));
        assert_eq!(Epsilon::cap_from_f64(1e-9).map(Epsilon::units), Ok(0));
        assert_eq!(
            Delta::cost_from_f64(1e-6).map(Delta::units),
            Ok(1_000_000_000)
        );
        assert_eq!(Delta::cost_from_f64(1e-20).map(Delta::units), Ok(1));
    }

    #[test]
    fn fifty_tenths_make_exactly_five() {
        let tenth = Epsilon::cost_from_f64(0.1).expect("valid");
        let mut total = Epsilon::ZERO;
        for _ in 0..50 {
            total = total.checked_add(tenth).expect("no overflow");
        }
        assert_eq!(total, Epsilon::cap_from_f64(5.0).expect("valid"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            Epsilon::cost_from_f64(f64::NAN),
            Err(PrivacyAmountError::NotFinite { .. })
        ));
        assert!(matches!(
            Epsilon::cost_from_f64(-0.5),
            Err(PrivacyAmountError::Negative { .. })
        ));
        assert!(matches!(
            Delta::cost_from_f64(1.5),
            Err(PrivacyAmountError::TooLarge { .. })
        ));
        assert!(matches!(
            "abc".parse::<Epsilon>(),
            Err(PrivacyAmountError::NotANumber { .. })
        ));
    }

    #[test]
    fn displays_exact_decimals() {
        assert_eq!(Epsilon::from_units(2_500_000).to_string(), "2.5");
        assert_eq!(Epsilon::from_units(3_000_000).to_string(), "3");
        assert_eq!(Delta::from_units(1_000_000_000).to_string(), "0.000001");
        assert_eq!(
            "1e-6".parse::<Delta>().map(|d| d.to_string()),
            Ok("0.000001".into())
        );
    }

    #[test]
    fn serde_uses_plain_numbers() {
        let e = Epsilon::from_units(500_000);
        assert_eq!(serde_json::to_string(&e).expect("serialize"), "0.5");
        let back: Epsilon = serde_json::from_str("0.5").expect("deserialize");
        assert_eq!(back, e);
        assert!(serde_json::from_str::<Epsilon>("-1").is_err());
    }
}
