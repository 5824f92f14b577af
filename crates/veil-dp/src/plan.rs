//! The query plan: what a validated DP query computes, in terms the executor and the
//! release step both understand. Built only by [`crate::sql::plan`].

use crate::manifest::{Day, PrivacyUnit};

/// A literal from the query, already typed against its column.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Str(String),
    Date(Day),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::NotEq => "<>",
            CmpOp::Lt => "<",
            CmpOp::LtEq => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtEq => ">=",
        }
    }
}

/// A row filter (the WHERE clause). Row-local by construction: it can only compare a
/// column of the row with literals, so it never changes how much one unit contributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Cmp {
        column: String,
        op: CmpOp,
        value: Literal,
    },
    In {
        column: String,
        values: Vec<Literal>,
        negated: bool,
    },
    Between {
        column: String,
        low: Literal,
        high: Literal,
        negated: bool,
    },
    IsNull {
        column: String,
        negated: bool,
    },
    /// A bare boolean column (`WHERE smoker`).
    IsTrue {
        column: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateUnit {
    Year,
    Month,
    Day,
}

impl DateUnit {
    pub fn name(self) -> &'static str {
        match self {
            DateUnit::Year => "year",
            DateUnit::Month => "month",
            DateUnit::Day => "day",
        }
    }
}

/// How group keys are known.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySet {
    /// Declared categories, in declaration order.
    Categories(Vec<String>),
    Bool,
    /// Every integer in the declared bounds.
    IntRange {
        lo: i64,
        hi: i64,
    },
    /// Every year/month/day bucket within the declared date bounds; keys are the first day
    /// of each bucket.
    Dates {
        unit: DateUnit,
        starts: Vec<Day>,
    },
    /// A text column: keys are not public; released only through a threshold (needs δ).
    Unknown,
}

impl KeySet {
    /// How many keys there are, if they are public.
    pub fn count(&self) -> Option<usize> {
        match self {
            KeySet::Categories(c) => Some(c.len()),
            KeySet::Bool => Some(2),
            KeySet::IntRange { lo, hi } => usize::try_from(hi - lo + 1).ok(),
            KeySet::Dates { starts, .. } => Some(starts.len()),
            KeySet::Unknown => None,
        }
    }

    pub fn is_public(&self) -> bool {
        !matches!(self, KeySet::Unknown)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupKey {
    pub column: String,
    pub keys: KeySet,
    pub nullable: bool,
}

/// A numeric column's public bounds, as needed to clamp it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub lo: f64,
    pub hi: f64,
    /// Integer-valued columns (int, date) need no fixed-point scaling.
    pub integer: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggKind {
    /// `COUNT(*)`.
    CountRows,
    /// `COUNT(col)`: rows where `col` is not null.
    CountColumn(String),
    Sum(String, Bounds),
    Avg(String, Bounds),
    /// `VARIANCE`/`VAR_SAMP`: sample variance.
    Variance(String, Bounds),
    Stddev(String, Bounds),
    /// `MEDIAN(col)` is `Quantile(col, 0.5)`.
    Quantile(String, Bounds, f64),
}

impl AggKind {
    pub fn function_name(&self) -> &'static str {
        match self {
            AggKind::CountRows | AggKind::CountColumn(_) => "COUNT",
            AggKind::Sum(..) => "SUM",
            AggKind::Avg(..) => "AVG",
            AggKind::Variance(..) => "VARIANCE",
            AggKind::Stddev(..) => "STDDEV",
            AggKind::Quantile(..) => "QUANTILE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Key(usize),
    Aggregate(usize),
}

/// Which noise to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Discrete Laplace, pure ε.
    Laplace,
    /// Discrete Gaussian, (ε, δ) through zCDP.
    Gaussian,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Laplace => "discrete_laplace",
            Mechanism::Gaussian => "discrete_gaussian",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MechanismChoice {
    /// Laplace when δ = 0; otherwise whichever gives the smaller expected error.
    Auto,
    Laplace,
    Gaussian,
}

/// What the caller asked to spend and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryOptions {
    pub epsilon: f64,
    pub delta: f64,
    /// Confidence level of the reported intervals, e.g. 0.95.
    pub confidence: f64,
    pub mechanism: MechanismChoice,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            delta: 0.0,
            confidence: 0.95,
            mechanism: MechanismChoice::Auto,
        }
    }
}

/// A validated query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPlan {
    pub dataset: String,
    pub filter: Option<Filter>,
    pub keys: Vec<GroupKey>,
    pub aggregates: Vec<Aggregate>,
    /// Select items in order, with their output names.
    pub outputs: Vec<(String, Output)>,
    /// Post-processing on released values: (output index, descending).
    pub order_by: Vec<(usize, bool)>,
    pub limit: Option<usize>,
    pub unit: PrivacyUnit,
    pub options: QueryOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub kind: AggKind,
}

impl QueryPlan {
    /// True when the keys must be found in the data (thresholded release).
    pub fn has_unknown_keys(&self) -> bool {
        self.keys.iter().any(|k| !k.keys.is_public())
    }

    /// The number of public key combinations (1 without GROUP BY).
    pub fn public_key_count(&self) -> Option<usize> {
        self.keys.iter().try_fold(1usize, |acc, k| {
            acc.checked_mul(k.keys.count()? + usize::from(k.nullable))
        })
    }
}
