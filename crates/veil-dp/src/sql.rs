//! The SQL subset: parse, validate against the manifest, and build a [`QueryPlan`].
//!
//! Validation is a whitelist. Each accepted shape is matched explicitly and every clause the
//! parser knows but we do not support must be empty, so a new SQL feature in a parser upgrade
//! is refused rather than silently ignored. Refusals explain what to change.

use sqlparser::ast::{
    self, BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, LimitClause, ObjectNamePart, OrderByKind, Query, Select, SelectItem, SetExpr,
    Statement, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::manifest::{Column, ColumnType, Day, Manifest, month_start, parse_date, year_start};
use crate::plan::*;

/// Longest accepted query text.
pub const MAX_SQL_LEN: usize = 10_000;
/// Most keys one GROUP BY column may enumerate.
pub const MAX_KEYS_PER_COLUMN: usize = 10_000;
/// Most key combinations (and so released rows) per query.
pub const MAX_KEY_COMBINATIONS: usize = 100_000;
/// Most aggregates per query: each splits the budget further.
pub const MAX_AGGREGATES: usize = 32;

/// Why a query was refused. The message is shown to the analyst as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(msg.into()))
}

const SUPPORTED: &str = "COUNT(*), COUNT(col), SUM, AVG, VARIANCE, STDDEV, MEDIAN, QUANTILE(col, q) and GROUP BY over public keys";

/// Validates `sql` against `manifest` and plans it. `dataset` is the only table name allowed.
pub fn plan(
    sql: &str,
    dataset: &str,
    manifest: &Manifest,
    options: QueryOptions,
) -> Result<QueryPlan, Refusal> {
    check_options(&options)?;
    if sql.len() > MAX_SQL_LEN {
        return refuse(format!("the query is longer than {MAX_SQL_LEN} characters"));
    }
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| Refusal(format!("cannot parse the query: {e}")))?;
    let query = match statements.as_slice() {
        [Statement::Query(q)] => q,
        [] => return refuse("the query is empty"),
        [_] => return refuse("only SELECT queries are allowed"),
        _ => return refuse("send one statement at a time"),
    };
    Planner {
        dataset,
        manifest,
        alias: None,
    }
    .query(query, options)
}

fn check_options(o: &QueryOptions) -> Result<(), Refusal> {
    // Callers check these first and answer a 400; a refusal here is the second lock.
    o.check().map_err(|e| Refusal(e.0))
}

struct Planner<'a> {
    dataset: &'a str,
    manifest: &'a Manifest,
    /// The table alias in FROM, if any.
    alias: Option<String>,
}

/// A select-list or ORDER BY item, before it is placed in the plan.
enum Item {
    Key(GroupKey),
    Agg(AggKind),
}

fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn fn_name(name: &ast::ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i.value.to_ascii_lowercase()),
        _ => None,
    }
}

impl Planner<'_> {
    fn query(&mut self, q: &Query, options: QueryOptions) -> Result<QueryPlan, Refusal> {
        if q.with.is_some() {
            return refuse("WITH (common table expressions) is not supported");
        }
        if q.fetch.is_some()
            || !q.locks.is_empty()
            || q.for_clause.is_some()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || !q.pipe_operators.is_empty()
        {
            return refuse(
                "only SELECT … FROM … [WHERE] [GROUP BY] [ORDER BY] [LIMIT] is supported",
            );
        }
        let select = match q.body.as_ref() {
            SetExpr::Select(s) => s,
            SetExpr::Query(_) => return refuse("subqueries are not supported"),
            SetExpr::SetOperation { .. } => {
                return refuse("UNION, INTERSECT and EXCEPT are not supported");
            }
            _ => return refuse("only SELECT queries are allowed"),
        };
        self.from(select)?;
        self.check_unsupported_select_parts(select)?;

        let keys = self.group_by(&select.group_by, &select.projection)?;
        let filter = select
            .selection
            .as_ref()
            .map(|e| self.where_clause(e))
            .transpose()?;

        let mut aggregates: Vec<Aggregate> = Vec::new();
        let mut outputs = Vec::new();
        for item in &select.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(ident(alias))),
                SelectItem::ExprWithAliases { .. } => {
                    return refuse("use one alias per select item");
                }
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    return refuse(format!(
                        "SELECT * would return rows; a DP query returns only aggregates: {SUPPORTED}"
                    ));
                }
            };
            let name = alias.unwrap_or_else(|| default_name(expr));
            if outputs.iter().any(|(n, _): &(String, Output)| *n == name) {
                return refuse(format!(
                    "two select items are named {name:?}; give them distinct aliases"
                ));
            }
            match self.item(expr)? {
                Item::Key(k) => {
                    let Some(i) = keys.iter().position(|g| *g == k) else {
                        return refuse(format!(
                            "{} is selected but not in GROUP BY; a DP query can only return aggregates and group keys",
                            expr
                        ));
                    };
                    outputs.push((name, Output::Key(i)));
                }
                Item::Agg(kind) => {
                    aggregates.push(Aggregate { kind });
                    outputs.push((name, Output::Aggregate(aggregates.len() - 1)));
                }
            }
        }
        if aggregates.is_empty() {
            return refuse(format!(
                "the query has no aggregate; use one of {SUPPORTED}"
            ));
        }
        if aggregates.len() > MAX_AGGREGATES {
            return refuse(format!("at most {MAX_AGGREGATES} aggregates per query"));
        }
        let order_by = self.order_by(q, &outputs, &keys, &aggregates)?;
        let limit = self.limit(q)?;
        let plan = QueryPlan {
            dataset: self.dataset.to_string(),
            filter,
            keys,
            aggregates,
            outputs,
            order_by,
            limit,
            unit: self.manifest.unit.clone(),
            options,
        };
        if plan.has_unknown_keys() {
            if plan.keys.len() > 1 {
                return refuse("grouping by a text column works only as the single GROUP BY key");
            }
            if options.delta == 0.0 {
                return refuse(format!(
                    "{} is a text column with no public list of values, so its groups can only be \
                     released through a threshold, which needs delta > 0 (e.g. --delta 1e-6)",
                    plan.keys[0].column
                ));
            }
        } else if plan
            .public_key_count()
            .is_none_or(|n| n > MAX_KEY_COMBINATIONS)
        {
            return refuse(format!(
                "the GROUP BY has more than {MAX_KEY_COMBINATIONS} key combinations; group by fewer or coarser keys"
            ));
        }
        Ok(plan)
    }

    fn from(&mut self, s: &Select) -> Result<(), Refusal> {
        let [twj] = s.from.as_slice() else {
            return if s.from.is_empty() {
                refuse(format!("add FROM {}", self.dataset))
            } else {
                refuse("only one table can be queried; joins are not supported")
            };
        };
        if !twj.joins.is_empty() {
            return refuse("joins are not supported");
        }
        match &twj.relation {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                let table = match name.0.as_slice() {
                    [ObjectNamePart::Identifier(i)] => ident(i),
                    _ => {
                        return refuse(format!(
                            "query the table {} by its plain name",
                            self.dataset
                        ));
                    }
                };
                if table != self.dataset {
                    return refuse(format!(
                        "this query runs on dataset {0}; write FROM {0} (not {table})",
                        self.dataset
                    ));
                }
                if args.is_some()
                    || !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    return refuse("table options, hints and sampling are not supported");
                }
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        return refuse("column aliases on the table are not supported");
                    }
                    self.alias = Some(ident(&a.name));
                }
                Ok(())
            }
            TableFactor::Derived { .. } => refuse("subqueries are not supported"),
            _ => refuse(format!("FROM must name the dataset {}", self.dataset)),
        }
    }

    fn check_unsupported_select_parts(&self, s: &Select) -> Result<(), Refusal> {
        if s.distinct.is_some() {
            return refuse(
                "SELECT DISTINCT would reveal which values exist; group by public keys instead",
            );
        }
        if s.having.is_some() {
            return refuse("HAVING is not supported: filter the released (noisy) results yourself");
        }
        if s.top.is_some()
            || s.into.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || !s.named_window.is_empty()
            || s.qualify.is_some()
            || s.exclude.is_some()
            || s.select_modifiers.is_some()
            || !s.optimizer_hints.is_empty()
            || s.value_table_mode.is_some()
        {
            return refuse(
                "only SELECT … FROM … [WHERE] [GROUP BY] [ORDER BY] [LIMIT] is supported",
            );
        }
        Ok(())
    }

    /// Resolves a column reference (`col`, `alias.col` or `dataset.col`).
    fn column(&self, e: &Expr) -> Result<Option<&Column>, Refusal> {
        let name = match e {
            Expr::Identifier(i) => ident(i),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] => {
                    let t = ident(t);
                    if t != self.dataset && Some(&t) != self.alias.as_ref() {
                        return refuse(format!("unknown table {t}"));
                    }
                    ident(c)
                }
                _ => return refuse(format!("unknown column {e}")),
            },
            _ => return Ok(None),
        };
        match self.manifest.column(&name) {
            Some(c) => Ok(Some(c)),
            None => refuse(format!(
                "unknown column {name}; the columns are: {}",
                self.manifest
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn group_by(
        &self,
        g: &GroupByExpr,
        projection: &[SelectItem],
    ) -> Result<Vec<GroupKey>, Refusal> {
        let exprs = match g {
            GroupByExpr::All(_) => return refuse("GROUP BY ALL is not supported; list the keys"),
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return refuse("GROUP BY modifiers (ROLLUP, CUBE, …) are not supported");
                }
                exprs
            }
        };
        let mut keys: Vec<GroupKey> = Vec::new();
        for e in exprs {
            // `GROUP BY 1` means the first select item; `GROUP BY alias` a select item's alias.
            let e = match e {
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => {
                        let pos: usize = n.parse().unwrap_or(0);
                        match projection.get(pos.wrapping_sub(1)) {
                            Some(SelectItem::UnnamedExpr(x))
                            | Some(SelectItem::ExprWithAlias { expr: x, .. }) => x,
                            _ => return refuse(format!("GROUP BY {n}: no such select item")),
                        }
                    }
                    _ => e,
                },
                Expr::Identifier(i) if self.manifest.column(&ident(i)).is_none() => projection
                    .iter()
                    .find_map(|item| match item {
                        SelectItem::ExprWithAlias { expr, alias } if ident(alias) == ident(i) => {
                            Some(expr)
                        }
                        _ => None,
                    })
                    .unwrap_or(e),
                _ => e,
            };
            let key = match self.item(e)? {
                Item::Key(k) => k,
                Item::Agg(_) => return refuse("aggregates cannot be GROUP BY keys"),
            };
            if keys.contains(&key) {
                return refuse(format!("{e} appears twice in GROUP BY"));
            }
            keys.push(key);
        }
        Ok(keys)
    }

    /// A select item: an aggregate, or an expression that can be a group key.
    fn item(&self, e: &Expr) -> Result<Item, Refusal> {
        match e {
            Expr::Nested(inner) => self.item(inner),
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                let c = self
                    .column(e)?
                    .ok_or_else(|| Refusal(format!("unknown column {e}")))?;
                Ok(Item::Key(self.key_for(c, None)?))
            }
            Expr::Function(f) => {
                let name = fn_name(&f.name).unwrap_or_default();
                if name == "date_trunc" {
                    let args = self.plain_args(f)?;
                    let [unit, col] = args.as_slice() else {
                        return refuse(
                            "date_trunc takes a unit and a date column: date_trunc('month', visit)",
                        );
                    };
                    let unit = match string_literal(unit).as_deref() {
                        Some("year") => DateUnit::Year,
                        Some("month") => DateUnit::Month,
                        Some("day") => DateUnit::Day,
                        _ => return refuse("date_trunc units are 'year', 'month' and 'day'"),
                    };
                    let c = self
                        .column(col)?
                        .ok_or_else(|| Refusal("date_trunc needs a date column".into()))?;
                    return Ok(Item::Key(self.key_for(c, Some(unit))?));
                }
                self.aggregate(&name, f).map(Item::Agg)
            }
            Expr::Value(_) | Expr::TypedString(_) => refuse(format!(
                "the constant {e} cannot be selected; select aggregates and group keys"
            )),
            other => refuse(format!(
                "{other} is not supported in SELECT; use {SUPPORTED}"
            )),
        }
    }

    fn key_for(&self, c: &Column, date_unit: Option<DateUnit>) -> Result<GroupKey, Refusal> {
        let keys = match (&c.ty, date_unit) {
            (ColumnType::Date { lo, hi }, Some(unit)) => KeySet::Dates {
                unit,
                starts: date_buckets(*lo, *hi, unit, &c.name)?,
            },
            (_, Some(_)) => {
                return refuse(format!(
                    "date_trunc needs a date column; {} is a {}",
                    c.name,
                    c.ty.name()
                ));
            }
            (ColumnType::Category { categories }, None) => KeySet::Categories(categories.clone()),
            (ColumnType::Bool, None) => KeySet::Bool,
            (ColumnType::Int { lo, hi }, None) => {
                let n = usize::try_from(hi - lo + 1).unwrap_or(usize::MAX);
                if n > MAX_KEYS_PER_COLUMN {
                    return refuse(format!(
                        "grouping by {} would enumerate {n} values (more than {MAX_KEYS_PER_COLUMN}); group by a coarser column",
                        c.name
                    ));
                }
                KeySet::IntRange { lo: *lo, hi: *hi }
            }
            (ColumnType::Date { .. }, None) => {
                return refuse(format!(
                    "group a date by a bucket: date_trunc('year' | 'month' | 'day', {})",
                    c.name
                ));
            }
            (ColumnType::Float { .. }, None) => {
                return refuse(format!(
                    "{} is a float column and has no public list of values to group by",
                    c.name
                ));
            }
            (ColumnType::Id, None) => {
                return refuse(format!(
                    "{} identifies the privacy unit and cannot be grouped by or selected",
                    c.name
                ));
            }
            (ColumnType::Text, None) => KeySet::Unknown,
        };
        Ok(GroupKey {
            column: c.name.clone(),
            keys,
            nullable: c.nullable,
        })
    }

    fn plain_args<'e>(&self, f: &'e ast::Function) -> Result<Vec<&'e Expr>, Refusal> {
        if f.filter.is_some()
            || f.null_treatment.is_some()
            || !f.within_group.is_empty()
            || !matches!(f.parameters, FunctionArguments::None)
            || f.uses_odbc_syntax
        {
            return refuse(format!(
                "{} with FILTER, WITHIN GROUP or parameters is not supported",
                f.name
            ));
        }
        if f.over.is_some() {
            return refuse("window functions (OVER …) are not supported");
        }
        let list = match &f.args {
            FunctionArguments::List(l) => l,
            FunctionArguments::None => return Ok(Vec::new()),
            FunctionArguments::Subquery(_) => return refuse("subqueries are not supported"),
        };
        if list.duplicate_treatment.is_some() {
            return refuse(format!(
                "{}(DISTINCT …) is not supported: distinct counts have unbounded sensitivity",
                f.name
            ));
        }
        if !list.clauses.is_empty() {
            return refuse(format!("clauses inside {}(…) are not supported", f.name));
        }
        list.args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                _ => refuse(format!("use plain arguments in {}(…)", f.name)),
            })
            .collect()
    }

    fn numeric_column(
        &self,
        func: &str,
        e: &Expr,
        allow_date: bool,
    ) -> Result<(String, Bounds), Refusal> {
        let c = self
            .column(e)?
            .ok_or_else(|| Refusal(format!("{func} takes a column name, not {e}")))?;
        let bounds = match &c.ty {
            ColumnType::Int { lo, hi } => Bounds {
                lo: *lo as f64,
                hi: *hi as f64,
                integer: true,
            },
            ColumnType::Float { lo, hi } => Bounds {
                lo: *lo,
                hi: *hi,
                integer: false,
            },
            ColumnType::Date { lo, hi } if allow_date => Bounds {
                lo: f64::from(*lo),
                hi: f64::from(*hi),
                integer: true,
            },
            other => {
                return refuse(format!(
                    "{func} needs a numeric column with declared bounds; {} is a {}",
                    c.name,
                    other.name()
                ));
            }
        };
        Ok((c.name.clone(), bounds))
    }

    fn aggregate(&self, name: &str, f: &ast::Function) -> Result<AggKind, Refusal> {
        // PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col)
        if name == "percentile_cont" && !f.within_group.is_empty() {
            let [ob] = f.within_group.as_slice() else {
                return refuse("PERCENTILE_CONT takes one ORDER BY column");
            };
            let FunctionArguments::List(l) = &f.args else {
                return refuse("PERCENTILE_CONT(q) needs the quantile q");
            };
            let [FunctionArg::Unnamed(FunctionArgExpr::Expr(q))] = l.args.as_slice() else {
                return refuse("PERCENTILE_CONT(q) needs the quantile q");
            };
            if f.over.is_some() || f.filter.is_some() {
                return refuse("window functions and FILTER are not supported");
            }
            let q = quantile_literal(q)?;
            let (col, b) = self.numeric_column("PERCENTILE_CONT", &ob.expr, true)?;
            return Ok(AggKind::Quantile(col, b, q));
        }
        if name == "count"
            && matches!(&f.args, FunctionArguments::List(l)
                if matches!(l.args.as_slice(), [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)])
                    && l.duplicate_treatment.is_none() && l.clauses.is_empty())
        {
            if f.over.is_some() {
                return refuse("window functions (OVER …) are not supported");
            }
            if f.filter.is_some() || !f.within_group.is_empty() {
                return refuse("COUNT(*) with FILTER or WITHIN GROUP is not supported");
            }
            return Ok(AggKind::CountRows);
        }
        let args = self.plain_args(f)?;
        let one = |func: &str| -> Result<&Expr, Refusal> {
            match args.as_slice() {
                [e] => Ok(*e),
                _ => refuse(format!("{func} takes one column")),
            }
        };
        Ok(match name {
            "count" => {
                let e = one("COUNT")?;
                if matches!(e, Expr::Value(v) if matches!(&v.value, Value::Number(n, _) if n == "1"))
                {
                    return Ok(AggKind::CountRows);
                }
                let c = self
                    .column(e)?
                    .ok_or_else(|| Refusal("COUNT takes *, or a column name".into()))?;
                if c.ty == ColumnType::Id {
                    return refuse(format!(
                        "{} identifies the privacy unit and cannot be counted",
                        c.name
                    ));
                }
                if c.nullable {
                    AggKind::CountColumn(c.name.clone())
                } else {
                    AggKind::CountRows
                }
            }
            "sum" => {
                let (c, b) = self.numeric_column("SUM", one("SUM")?, false)?;
                AggKind::Sum(c, b)
            }
            "avg" | "mean" => {
                let (c, b) = self.numeric_column("AVG", one("AVG")?, false)?;
                AggKind::Avg(c, b)
            }
            "variance" | "var" | "var_samp" => {
                let (c, b) = self.numeric_column("VARIANCE", one("VARIANCE")?, false)?;
                AggKind::Variance(c, b)
            }
            "stddev" | "stddev_samp" | "std" => {
                let (c, b) = self.numeric_column("STDDEV", one("STDDEV")?, false)?;
                AggKind::Stddev(c, b)
            }
            "median" => {
                let (c, b) = self.numeric_column("MEDIAN", one("MEDIAN")?, true)?;
                AggKind::Quantile(c, b, 0.5)
            }
            "quantile" | "percentile_cont" | "approx_percentile_cont" => {
                let [col, q] = args.as_slice() else {
                    return refuse("QUANTILE takes a column and a quantile: QUANTILE(income, 0.9)");
                };
                let (c, b) = self.numeric_column("QUANTILE", col, true)?;
                AggKind::Quantile(c, b, quantile_literal(q)?)
            }
            "var_pop" | "stddev_pop" => {
                return refuse(format!(
                    "{} is not supported; use VARIANCE or STDDEV (sample)",
                    name.to_uppercase()
                ));
            }
            "min" | "max" => {
                return refuse(format!(
                    "{} would reveal an actual value of one person; use QUANTILE(col, 0.01) or QUANTILE(col, 0.99)",
                    name.to_uppercase()
                ));
            }
            other => return refuse(format!("{other}() is not supported; use {SUPPORTED}")),
        })
    }

    /// The WHERE clause, in the normal form of [`Filter`], within its size limits.
    fn where_clause(&self, e: &Expr) -> Result<Filter, Refusal> {
        let f = self.filter(e)?;
        if f.terms() > MAX_FILTER_TERMS {
            return refuse(format!(
                "the WHERE clause has more than {MAX_FILTER_TERMS} conditions"
            ));
        }
        if f.depth() > MAX_FILTER_DEPTH {
            return refuse(format!(
                "the WHERE clause nests AND and OR more than {MAX_FILTER_DEPTH} levels deep"
            ));
        }
        Ok(f)
    }

    fn filter(&self, e: &Expr) -> Result<Filter, Refusal> {
        match e {
            Expr::Nested(inner) => self.filter(inner),
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    // A flat chain `a AND b AND c …` parses as a left-deep tree as deep as the
                    // chain is long: walk its left spine in a loop, not by recursion.
                    let mut operands = vec![right.as_ref()];
                    let mut spine = left.as_ref();
                    while let Expr::BinaryOp {
                        left: l,
                        op: o,
                        right: r,
                    } = spine
                        && o == op
                    {
                        if operands.len() > MAX_FILTER_TERMS {
                            return refuse(format!(
                                "the WHERE clause has more than {MAX_FILTER_TERMS} conditions"
                            ));
                        }
                        operands.push(r);
                        spine = l;
                    }
                    operands.push(spine);
                    operands.reverse();
                    let parts = operands
                        .into_iter()
                        .map(|e| self.filter(e))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(if *op == BinaryOperator::And {
                        Filter::and(parts)
                    } else {
                        Filter::or(parts)
                    })
                }
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => self.comparison(left, op, right),
                other => refuse(format!("the operator {other} is not supported in WHERE")),
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(self.filter(expr)?.negated()),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let c = self.filter_column(expr)?;
                let values = list
                    .iter()
                    .map(|v| literal_for(c, v))
                    .collect::<Result<Vec<_>, _>>()?;
                if values.is_empty() || values.len() > 1_000 {
                    return refuse("IN lists take between 1 and 1000 values");
                }
                Ok(Filter::In {
                    column: c.name.clone(),
                    values,
                    negated: *negated,
                })
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let c = self.filter_column(expr)?;
                Ok(Filter::Between {
                    column: c.name.clone(),
                    low: literal_for(c, low)?,
                    high: literal_for(c, high)?,
                    negated: *negated,
                })
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let c = self.filter_column(inner)?;
                Ok(Filter::IsNull {
                    column: c.name.clone(),
                    negated: matches!(e, Expr::IsNotNull(_)),
                })
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                let c = self.filter_column(e)?;
                if c.ty != ColumnType::Bool {
                    return refuse(format!(
                        "{} is not a boolean column; compare it with a value",
                        c.name
                    ));
                }
                Ok(Filter::IsBool {
                    column: c.name.clone(),
                    value: true,
                })
            }
            other => refuse(format!(
                "{other} is not supported in WHERE; compare columns with constants using =, <>, <, <=, >, >=, IN, BETWEEN, IS NULL, AND, OR, NOT"
            )),
        }
    }

    fn filter_column(&self, e: &Expr) -> Result<&Column, Refusal> {
        match e {
            Expr::Nested(inner) => self.filter_column(inner),
            _ => self.column(e)?.ok_or_else(|| {
                Refusal(format!(
                    "in WHERE, compare a column with a constant (found {e})"
                ))
            }),
        }
    }

    fn comparison(
        &self,
        left: &Expr,
        op: &BinaryOperator,
        right: &Expr,
    ) -> Result<Filter, Refusal> {
        let op = match op {
            BinaryOperator::Eq => CmpOp::Eq,
            BinaryOperator::NotEq => CmpOp::NotEq,
            BinaryOperator::Lt => CmpOp::Lt,
            BinaryOperator::LtEq => CmpOp::LtEq,
            BinaryOperator::Gt => CmpOp::Gt,
            _ => CmpOp::GtEq,
        };
        // `5 < age` is `age > 5`.
        let (col_expr, lit_expr, op) = if self.column(left)?.is_some() {
            (left, right, op)
        } else if self.column(right)?.is_some() {
            let flipped = match op {
                CmpOp::Lt => CmpOp::Gt,
                CmpOp::LtEq => CmpOp::GtEq,
                CmpOp::Gt => CmpOp::Lt,
                CmpOp::GtEq => CmpOp::LtEq,
                same => same,
            };
            (right, left, flipped)
        } else {
            return refuse(format!(
                "in WHERE, compare a column with a constant (found {left} and {right})"
            ));
        };
        if self.column(lit_expr)?.is_some() {
            return refuse(
                "comparing two columns is not supported; compare a column with a constant",
            );
        }
        let c = self.filter_column(col_expr)?;
        Ok(Filter::Cmp {
            column: c.name.clone(),
            op,
            value: literal_for(c, lit_expr)?,
        })
    }

    fn order_by(
        &self,
        q: &Query,
        outputs: &[(String, Output)],
        keys: &[GroupKey],
        aggregates: &[Aggregate],
    ) -> Result<Vec<(usize, bool)>, Refusal> {
        let Some(ob) = &q.order_by else {
            return Ok(Vec::new());
        };
        if ob.interpolate.is_some() {
            return refuse("ORDER BY … INTERPOLATE is not supported");
        }
        let exprs = match &ob.kind {
            OrderByKind::All(_) => return refuse("ORDER BY ALL is not supported"),
            OrderByKind::Expressions(e) => e,
        };
        let mut out = Vec::new();
        for o in exprs {
            if o.with_fill.is_some() {
                return refuse("ORDER BY … WITH FILL is not supported");
            }
            let desc = o.options.asc == Some(false);
            let idx = self.output_index(&o.expr, outputs, keys, aggregates)?;
            out.push((idx, desc));
        }
        Ok(out)
    }

    /// Finds which output an ORDER BY expression means: a position, an output name, or an
    /// expression equal to a select item.
    fn output_index(
        &self,
        e: &Expr,
        outputs: &[(String, Output)],
        keys: &[GroupKey],
        aggregates: &[Aggregate],
    ) -> Result<usize, Refusal> {
        if let Expr::Value(v) = e
            && let Value::Number(n, _) = &v.value
        {
            let pos: usize = n
                .parse()
                .map_err(|_| Refusal(format!("ORDER BY position {n} is not a whole number")))?;
            if pos == 0 || pos > outputs.len() {
                return refuse(format!("ORDER BY position {pos} is out of range"));
            }
            return Ok(pos - 1);
        }
        if let Expr::Identifier(i) = e
            && let Some(idx) = outputs.iter().position(|(n, _)| *n == ident(i))
        {
            return Ok(idx);
        }
        let item = self.item(e)?;
        let found = outputs.iter().position(|(_, o)| match (o, &item) {
            (Output::Key(k), Item::Key(g)) => keys[*k] == *g,
            (Output::Aggregate(a), Item::Agg(kind)) => aggregates[*a].kind == *kind,
            _ => false,
        });
        found.ok_or_else(|| {
            Refusal(format!(
                "ORDER BY {e}: order by a selected item or its alias"
            ))
        })
    }

    fn limit(&self, q: &Query) -> Result<Option<usize>, Refusal> {
        match &q.limit_clause {
            None => Ok(None),
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if offset.is_some() || !limit_by.is_empty() {
                    return refuse("OFFSET and LIMIT BY are not supported");
                }
                match limit {
                    None => Ok(None),
                    Some(Expr::Value(v)) => match &v.value {
                        Value::Number(n, _) => n
                            .parse::<usize>()
                            .map(Some)
                            .map_err(|_| Refusal(format!("LIMIT {n} is not a whole number"))),
                        _ => refuse("LIMIT takes a whole number"),
                    },
                    Some(_) => refuse("LIMIT takes a whole number"),
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => refuse("OFFSET is not supported"),
        }
    }
}

fn default_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => ident(i),
        Expr::CompoundIdentifier(p) => p.last().map(ident).unwrap_or_default(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.to_ascii_lowercase()),
            _ => None,
        },
        _ => None,
    }
}

fn quantile_literal(e: &Expr) -> Result<f64, Refusal> {
    let q = match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<f64>().ok(),
            _ => None,
        },
        _ => None,
    };
    match q {
        Some(q) if q > 0.0 && q < 1.0 => Ok(q),
        _ => refuse(format!(
            "the quantile must be a number strictly between 0 and 1 (got {e})"
        )),
    }
}

/// Reads a literal and types it for comparison with column `c`.
fn literal_for(c: &Column, e: &Expr) -> Result<Literal, Refusal> {
    let (negative, e) = match e {
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => (true, expr.as_ref()),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => (false, expr.as_ref()),
        Expr::Nested(inner) => return literal_for(c, inner),
        other => (false, other),
    };
    let mismatch = || {
        Refusal(format!(
            "{e} cannot be compared with {} (a {} column)",
            c.name,
            c.ty.name()
        ))
    };
    let value = match e {
        Expr::Value(v) => &v.value,
        Expr::TypedString(ts) => {
            if !matches!(ts.data_type, DataType::Date) {
                return Err(mismatch());
            }
            let s = match &ts.value.value {
                Value::SingleQuotedString(s) => s,
                _ => return Err(mismatch()),
            };
            return match c.ty {
                ColumnType::Date { .. } => parse_date(s)
                    .map(Literal::Date)
                    .ok_or_else(|| Refusal(format!("invalid date {s:?}: use YYYY-MM-DD"))),
                _ => Err(mismatch()),
            };
        }
        _ => return refuse(format!("compare {} with a constant, not {e}", c.name)),
    };
    if matches!(value, Value::Null) {
        return refuse(format!(
            "use {} IS NULL instead of comparing with NULL",
            c.name
        ));
    }
    match (&c.ty, value) {
        (ColumnType::Int { .. }, Value::Number(n, _)) => {
            let sign = if negative { "-" } else { "" };
            match format!("{sign}{n}").parse::<i64>() {
                Ok(i) => Ok(Literal::Int(i)),
                Err(_) => format!("{sign}{n}")
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Literal::Float)
                    .ok_or_else(mismatch),
            }
        }
        (ColumnType::Float { .. }, Value::Number(n, _)) => n
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| Literal::Float(if negative { -f } else { f }))
            .ok_or_else(mismatch),
        (ColumnType::Date { .. }, Value::SingleQuotedString(s)) if !negative => parse_date(s)
            .map(Literal::Date)
            .ok_or_else(|| Refusal(format!("invalid date {s:?}: use YYYY-MM-DD"))),
        (
            ColumnType::Category { .. } | ColumnType::Text | ColumnType::Id,
            Value::SingleQuotedString(s),
        ) if !negative => Ok(Literal::Str(s.clone())),
        (ColumnType::Bool, Value::Boolean(b)) if !negative => Ok(Literal::Bool(*b)),
        _ => Err(mismatch()),
    }
}

/// The first day of every `unit` bucket from `lo` to `hi`.
fn date_buckets(lo: Day, hi: Day, unit: DateUnit, column: &str) -> Result<Vec<Day>, Refusal> {
    let too_many = || {
        Refusal(format!(
            "grouping {column} by {} would enumerate more than {MAX_KEYS_PER_COLUMN} buckets; use a coarser unit",
            unit.name()
        ))
    };
    let mut out = Vec::new();
    match unit {
        DateUnit::Day => {
            if usize::try_from(hi - lo + 1).unwrap_or(usize::MAX) > MAX_KEYS_PER_COLUMN {
                return Err(too_many());
            }
            out.extend(lo..=hi);
        }
        DateUnit::Month | DateUnit::Year => {
            // One function names a bucket here and in the executor (`month_start`,
            // `year_start`): the keys listed are exactly the keys the data can produce.
            // The first day of the bucket holding `d`, and of the bucket after `d`'s.
            let year = unit == DateUnit::Year;
            let first = |d: Day| if year { year_start(d) } else { month_start(d) };
            let next = |d: Day| first(d.saturating_add(if year { 366 } else { 31 }));
            let mut start = first(lo);
            while start <= hi {
                out.push(start);
                if out.len() > MAX_KEYS_PER_COLUMN {
                    return Err(too_many());
                }
                let following = next(start);
                if following <= start {
                    break;
                }
                start = following;
            }
        }
    }
    Ok(out)
}
