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
///
/// Kept in a normal form the planner establishes and the executor relies on: no negation
/// node (NOTs are pushed into the leaves, which is exact under SQL's three-valued logic
/// because a WHERE keeps only rows whose condition is TRUE and Kleene logic obeys De
/// Morgan's laws), AND and OR n-ary and never directly nested in themselves, and at most
/// [`MAX_FILTER_TERMS`] leaves and [`MAX_FILTER_DEPTH`] levels, so every accepted filter
/// renders to a shallow expression the engine can always parse and plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
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
    /// A bare boolean column (`WHERE smoker`) or its negation (`value: false`).
    IsBool {
        column: String,
        value: bool,
    },
}

/// Most comparisons one WHERE clause may hold.
pub const MAX_FILTER_TERMS: usize = 256;
/// Deepest AND/OR nesting of a WHERE clause (after flattening `a AND (b AND c)`).
pub const MAX_FILTER_DEPTH: usize = 16;

impl CmpOp {
    /// The comparison that is TRUE exactly where this one is FALSE (for non-null values).
    pub fn negated(self) -> Self {
        match self {
            CmpOp::Eq => CmpOp::NotEq,
            CmpOp::NotEq => CmpOp::Eq,
            CmpOp::Lt => CmpOp::GtEq,
            CmpOp::LtEq => CmpOp::Gt,
            CmpOp::Gt => CmpOp::LtEq,
            CmpOp::GtEq => CmpOp::Lt,
        }
    }
}

impl Filter {
    /// `NOT self`, in normal form.
    pub fn negated(self) -> Filter {
        match self {
            Filter::And(xs) => Filter::or(xs.into_iter().map(Filter::negated).collect()),
            Filter::Or(xs) => Filter::and(xs.into_iter().map(Filter::negated).collect()),
            Filter::Cmp { column, op, value } => Filter::Cmp {
                column,
                op: op.negated(),
                value,
            },
            Filter::In {
                column,
                values,
                negated,
            } => Filter::In {
                column,
                values,
                negated: !negated,
            },
            Filter::Between {
                column,
                low,
                high,
                negated,
            } => Filter::Between {
                column,
                low,
                high,
                negated: !negated,
            },
            Filter::IsNull { column, negated } => Filter::IsNull {
                column,
                negated: !negated,
            },
            Filter::IsBool { column, value } => Filter::IsBool {
                column,
                value: !value,
            },
        }
    }

    /// The conjunction of `parts`, with nested ANDs flattened into it.
    pub fn and(parts: Vec<Filter>) -> Filter {
        Self::flat(parts, true)
    }

    /// The disjunction of `parts`, with nested ORs flattened into it.
    pub fn or(parts: Vec<Filter>) -> Filter {
        Self::flat(parts, false)
    }

    fn flat(parts: Vec<Filter>, and: bool) -> Filter {
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            match (p, and) {
                (Filter::And(xs), true) | (Filter::Or(xs), false) => out.extend(xs),
                (other, _) => out.push(other),
            }
        }
        match (out.len(), and) {
            (1, _) => out.pop().unwrap_or(Filter::And(Vec::new())),
            (_, true) => Filter::And(out),
            (_, false) => Filter::Or(out),
        }
    }

    /// Leaves (comparisons) in the filter.
    pub fn terms(&self) -> usize {
        match self {
            Filter::And(xs) | Filter::Or(xs) => xs.iter().map(Filter::terms).sum(),
            _ => 1,
        }
    }

    /// Levels of AND/OR nesting (a single comparison is depth 0).
    pub fn depth(&self) -> usize {
        match self {
            Filter::And(xs) | Filter::Or(xs) => 1 + xs.iter().map(Filter::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The columns the filter reads.
    pub fn columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And(xs) | Filter::Or(xs) => xs.iter().for_each(|x| x.columns(out)),
            Filter::Cmp { column, .. }
            | Filter::In { column, .. }
            | Filter::Between { column, .. }
            | Filter::IsNull { column, .. }
            | Filter::IsBool { column, .. } => out.push(column),
        }
    }
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

/// Privacy parameters outside what the node accepts: the caller's input is out of range
/// (a 400), which is a different thing from a query the DP subset refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidParameters(pub String);

/// The smallest ε a request may ask for: one unit of the budget's integer ledger (a cost is
/// rounded up to it anyway).
pub const MIN_EPSILON: f64 = 1e-6;
/// The largest ε a request may ask for (a budget holds no more).
pub const MAX_EPSILON: f64 = veil_types::privacy::MAX_EPSILON;
/// The smallest positive δ: one unit of the ledger.
pub const MIN_DELTA: f64 = 1e-15;

/// Checks ε and a confidence level, the parameters every DP request takes.
pub fn check_epsilon_and_confidence(
    epsilon: f64,
    confidence: f64,
) -> Result<(), InvalidParameters> {
    if !(epsilon.is_finite() && (MIN_EPSILON..=MAX_EPSILON).contains(&epsilon)) {
        return Err(InvalidParameters(format!(
            "epsilon must be between {MIN_EPSILON} and {MAX_EPSILON}"
        )));
    }
    if !(confidence.is_finite() && confidence > 0.5 && confidence < 1.0) {
        return Err(InvalidParameters(
            "the confidence level must be between 0.5 and 1 (e.g. 0.95)".into(),
        ));
    }
    Ok(())
}

impl QueryOptions {
    /// Checks that the parameters are in range (see [`InvalidParameters`]).
    pub fn check(&self) -> Result<(), InvalidParameters> {
        check_epsilon_and_confidence(self.epsilon, self.confidence)?;
        if !(self.delta.is_finite()
            && (self.delta == 0.0 || (MIN_DELTA..1.0).contains(&self.delta)))
        {
            return Err(InvalidParameters(format!(
                "delta must be 0, or at least {MIN_DELTA} and below 1"
            )));
        }
        if self.mechanism == MechanismChoice::Gaussian && self.delta == 0.0 {
            return Err(InvalidParameters(
                "the Gaussian mechanism needs delta > 0".into(),
            ));
        }
        Ok(())
    }
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
    /// Every column the query reads (filter, keys, aggregates), sorted, each once.
    pub fn columns_read(&self) -> Vec<String> {
        let mut cols: Vec<&str> = Vec::new();
        if let Some(f) = &self.filter {
            f.columns(&mut cols);
        }
        cols.extend(self.keys.iter().map(|k| k.column.as_str()));
        for a in &self.aggregates {
            match &a.kind {
                AggKind::CountRows => {}
                AggKind::CountColumn(c)
                | AggKind::Sum(c, _)
                | AggKind::Avg(c, _)
                | AggKind::Variance(c, _)
                | AggKind::Stddev(c, _)
                | AggKind::Quantile(c, _, _) => cols.push(c),
            }
        }
        cols.sort_unstable();
        cols.dedup();
        cols.into_iter().map(str::to_string).collect()
    }

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
