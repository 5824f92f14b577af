//! Planner, accounting and release tests.
//!
//! The statistical tests draw from OpenDP's CSPRNG, which cannot be seeded (by design: a
//! seedable noise source is an attack surface). Their tolerances are set at ≥ 5 standard
//! errors, so a correct implementation fails them with probability below one in a million,
//! while a wrong scale (say √2 off) or a bias fails them every time.

use crate::exact::{ExactResult, KeyValue, measures};
use crate::manifest::Manifest;
use crate::plan::*;
use crate::release::{Cell, cost, release};
use crate::sql::plan;

/// The shared patients manifest, with a nullable boolean column for the planner's predicates.
const PATIENTS: &str = concat!(
    include_str!("../../../fixtures/patients.toml"),
    "\n[columns.smoker]\ntype = \"bool\"\nnullable = true\n"
);

fn manifest() -> Manifest {
    Manifest::parse(PATIENTS).expect("valid manifest")
}

fn opts(epsilon: f64, delta: f64) -> QueryOptions {
    QueryOptions {
        epsilon,
        delta,
        ..QueryOptions::default()
    }
}

fn planned(sql: &str, o: QueryOptions) -> QueryPlan {
    plan(sql, "patients", &manifest(), o).unwrap_or_else(|r| panic!("{sql}: refused: {r}"))
}

fn refused(sql: &str, o: QueryOptions) -> String {
    match plan(sql, "patients", &manifest(), o) {
        Ok(p) => panic!("{sql} should be refused, got {p:?}"),
        Err(r) => r.0,
    }
}

#[test]
fn plans_the_issue_example() {
    let p = planned(
        "SELECT sex, COUNT(*), AVG(age) FROM patients WHERE income > 20000 GROUP BY sex",
        opts(0.5, 0.0),
    );
    assert_eq!(p.keys.len(), 1);
    assert_eq!(
        p.keys[0].keys,
        KeySet::Categories(vec!["F".into(), "M".into()])
    );
    assert_eq!(p.aggregates.len(), 2);
    assert_eq!(p.aggregates[0].kind, AggKind::CountRows);
    assert!(matches!(p.aggregates[1].kind, AggKind::Avg(ref c, _) if c == "age"));
    assert_eq!(
        p.filter,
        Some(Filter::Cmp {
            column: "income".into(),
            op: CmpOp::Gt,
            value: Literal::Float(20000.0)
        })
    );
    assert_eq!(p.outputs[0].0, "sex");
}

#[test]
fn plans_the_other_supported_shapes() {
    let o = opts(1.0, 1e-6);
    for sql in [
        "SELECT COUNT(*) FROM patients",
        "select count(1) as n from PATIENTS p where p.age between 18 and 65 and not smoker",
        "SELECT SUM(income), VARIANCE(age), STDDEV(age), MEDIAN(income) FROM patients",
        "SELECT QUANTILE(age, 0.9), PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY income) FROM patients",
        "SELECT date_trunc('year', visit) AS y, COUNT(*) FROM patients GROUP BY date_trunc('year', visit) ORDER BY y",
        "SELECT age, COUNT(*) FROM patients WHERE sex IN ('F') GROUP BY age ORDER BY 2 DESC LIMIT 5",
        "SELECT smoker, COUNT(smoker) FROM patients WHERE visit >= DATE '2020-01-01' GROUP BY smoker",
        "SELECT city, COUNT(*) FROM patients GROUP BY city",
        "SELECT COUNT(*) FROM patients WHERE smoker IS NOT NULL AND (age < 5 OR 90 <= age)",
    ] {
        planned(sql, o);
    }
    let p = planned(
        "SELECT date_trunc('month', visit) AS m, COUNT(*) FROM patients GROUP BY 1",
        o,
    );
    assert!(
        matches!(&p.keys[0].keys, KeySet::Dates { unit: DateUnit::Month, starts } if starts.len() == 372)
    );
    let p = planned("SELECT sex AS s, COUNT(*) FROM patients GROUP BY s", o);
    assert_eq!(p.keys[0].column, "sex");
}

#[test]
fn refuses_what_would_leak_or_is_unsupported_with_reasons() {
    let o = opts(1.0, 0.0);
    for (sql, needle) in [
        ("SELECT * FROM patients", "would return rows"),
        ("SELECT age FROM patients", "not in GROUP BY"),
        ("SELECT MIN(age) FROM patients", "actual value"),
        ("SELECT COUNT(DISTINCT age) FROM patients", "DISTINCT"),
        ("SELECT DISTINCT sex FROM patients", "DISTINCT"),
        (
            "SELECT COUNT(*) FROM patients a JOIN patients b ON a.age = b.age",
            "joins",
        ),
        (
            "SELECT COUNT(*) FROM (SELECT * FROM patients)",
            "subqueries",
        ),
        ("SELECT COUNT(*) FROM other", "dataset patients"),
        ("SELECT COUNT(*) FROM patients; SELECT 1", "one statement"),
        ("DROP TABLE patients", "only SELECT"),
        (
            "SELECT income, COUNT(*) FROM patients GROUP BY income",
            "float",
        ),
        (
            "SELECT city, COUNT(*) FROM patients GROUP BY city",
            "delta > 0",
        ),
        (
            "SELECT visit, COUNT(*) FROM patients GROUP BY visit",
            "date_trunc",
        ),
        (
            "SELECT COUNT(*) FROM patients WHERE salary > 3",
            "unknown column salary",
        ),
        (
            "SELECT COUNT(*) FROM patients WHERE age > income",
            "two columns",
        ),
        (
            "SELECT COUNT(*) FROM patients WHERE sex = 3",
            "cannot be compared",
        ),
        (
            "SELECT COUNT(*) FROM patients WHERE upper(sex) = 'F'",
            "compare a column with a constant",
        ),
        (
            "SELECT COUNT(*) FROM patients WHERE age LIKE '1%'",
            "not supported in WHERE",
        ),
        ("SELECT COUNT(*) FROM patients WHERE age = NULL", "IS NULL"),
        (
            "SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) > 5",
            "HAVING",
        ),
        ("SELECT SUM(sex) FROM patients", "numeric column"),
        ("SELECT ROW_NUMBER() OVER () FROM patients", "window"),
        ("SELECT QUANTILE(age, 1.5) FROM patients", "between 0 and 1"),
        ("SELECT 1 FROM patients", "constant"),
        (
            "WITH t AS (SELECT * FROM patients) SELECT COUNT(*) FROM t",
            "WITH",
        ),
        (
            "SELECT COUNT(*) FROM patients UNION SELECT COUNT(*) FROM patients",
            "UNION",
        ),
        ("SELEC COUNT(*)", "cannot parse"),
    ] {
        let r = refused(sql, o);
        assert!(r.contains(needle), "{sql}\n→ {r}\n(expected {needle:?})");
    }
    assert!(refused("SELECT COUNT(*) FROM patients", opts(0.0, 0.0)).contains("epsilon"));
    assert!(refused("SELECT COUNT(*) FROM patients", opts(1.0, 1.0)).contains("delta"));
    let long = format!(
        "SELECT COUNT(*) FROM patients WHERE {}",
        "age > 1 AND ".repeat(1000)
    );
    assert!(refused(&long, o).contains("longer"));
}

#[test]
fn the_charge_never_exceeds_the_request_and_uses_most_of_it() {
    for (sql, e, d) in [
        ("SELECT COUNT(*) FROM patients", 1.0, 0.0),
        (
            "SELECT sex, COUNT(*), AVG(age), SUM(income) FROM patients GROUP BY sex",
            0.5,
            0.0,
        ),
        (
            "SELECT VARIANCE(income), MEDIAN(age) FROM patients",
            2.0,
            0.0,
        ),
        (
            "SELECT COUNT(*), AVG(age), SUM(income), STDDEV(age) FROM patients",
            1.0,
            1e-6,
        ),
        (
            "SELECT city, COUNT(*) FROM patients GROUP BY city",
            1.0,
            1e-6,
        ),
    ] {
        let c = cost(planned(sql, opts(e, d))).expect("costs");
        assert!(
            c.epsilon <= e && c.delta <= d,
            "{sql}: ({}, {}) > ({e}, {d})",
            c.epsilon,
            c.delta
        );
        assert!(
            c.epsilon > e * 0.999,
            "{sql}: charged only {} of {e}",
            c.epsilon
        );
    }
}

#[test]
fn laplace_count_scale_follows_epsilon_and_the_unit() {
    let c = cost(planned("SELECT COUNT(*) FROM patients", opts(0.5, 0.0))).expect("costs");
    let info = release(&c, ExactResult::new(measures(&c.plan))).expect("release");
    let scale = info.columns()[0].noise_scales[0];
    assert!((scale - 2.0).abs() < 1e-6, "scale {scale}");

    // Five rows per unit: five times the noise for the same ε.
    let m = Manifest::parse(
        "[privacy]\nunit = { column = \"pid\", max_rows = 5 }\n[columns.pid]\ntype = \"id\"\n[columns.age]\ntype = \"int\"\nbounds = [0, 120]",
    )
    .expect("manifest");
    let p = plan(
        "SELECT COUNT(*) FROM patients",
        "patients",
        &m,
        opts(0.5, 0.0),
    )
    .expect("plan");
    let c = cost(p).expect("cost");
    let info = release(&c, ExactResult::new(measures(&c.plan))).expect("release");
    assert!((info.columns()[0].noise_scales[0] - 10.0).abs() < 1e-6);
}

fn count_release(c: &crate::release::CostedPlan, exact_count: i64) -> f64 {
    let mut e = ExactResult::new(measures(&c.plan));
    e.add(Vec::new(), 0, 0, exact_count);
    match &release(c, e).expect("release").rows()[0][0] {
        Cell::Value { value, .. } => *value,
        other => panic!("{other:?}"),
    }
}

#[test]
fn released_counts_are_unbiased_with_the_discrete_laplace_variance() {
    let c = cost(planned("SELECT COUNT(*) FROM patients", opts(1.0, 0.0))).expect("costs");
    let n = 20_000;
    let draws: Vec<f64> = (0..n).map(|_| count_release(&c, 1_000) - 1_000.0).collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // Discrete Laplace with scale 1: Var = 2e^{-1}/(1 - e^{-1})².
    let expected = 2.0 * (-1f64).exp() / (1.0 - (-1f64).exp()).powi(2);
    let mean_se = (expected / n as f64).sqrt();
    assert!(mean.abs() < 5.0 * mean_se, "bias {mean} (se {mean_se})");
    // Kurtosis of the discrete Laplace is about 6, so Var(s²) ≈ 5σ⁴/n.
    let var_se = expected * (5.0 / n as f64).sqrt();
    assert!(
        (var - expected).abs() < 5.0 * var_se,
        "variance {var}, expected {expected} ± {}",
        5.0 * var_se
    );
}

#[test]
fn confidence_intervals_cover_the_truth_as_often_as_stated() {
    let c = cost(planned("SELECT SUM(income) FROM patients", opts(1.0, 0.0))).expect("costs");
    let truth = 12_345_678.0;
    let fixed = crate::exact::FixedPoint::for_bounds(
        Bounds {
            lo: 0.0,
            hi: 500_000.0,
            integer: false,
        },
        crate::exact::MAX_FIXED,
    );
    let n = 4_000;
    let mut covered = 0;
    for _ in 0..n {
        let mut e = ExactResult::new(measures(&c.plan));
        e.add(Vec::new(), 0, 0, fixed.apply(truth));
        let r = release(&c, e).expect("release");
        if let Cell::Value {
            low: Some(lo),
            high: Some(hi),
            ..
        } = r.rows()[0][0]
            && lo <= truth
            && truth <= hi
        {
            covered += 1;
        }
    }
    let rate = f64::from(covered) / f64::from(n);
    // 95% nominal; the OpenDP bound is conservative for the discrete distribution.
    assert!(rate > 0.93, "coverage {rate}");
}

#[test]
fn group_keys_come_from_the_manifest_and_missing_groups_are_zero_filled() {
    let c = cost(planned(
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
        opts(5.0, 0.0),
    ))
    .expect("costs");
    let mut e = ExactResult::new(measures(&c.plan));
    e.add(vec![KeyValue::Str("F".into())], 0, 0, 500);
    // A key outside the manifest (cannot come from a validated upload) is never released.
    e.add(vec![KeyValue::Str("X".into())], 0, 0, 7);
    let r = release(&c, e).expect("release");
    let keys: Vec<_> = r
        .rows()
        .iter()
        .map(|row| match &row[0] {
            Cell::Key { value } => value.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [Some("F".to_string()), Some("M".to_string())]);
    match &r.rows()[1][1] {
        Cell::Value { value, .. } => assert!(value.abs() < 30.0, "M is noise around 0: {value}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_are_released_only_above_the_threshold() {
    let c = cost(planned(
        "SELECT city, COUNT(*) FROM patients GROUP BY city",
        opts(1.0, 1e-6),
    ))
    .expect("costs");
    let mut e = ExactResult::new(measures(&c.plan));
    e.add(vec![KeyValue::Str("Lyon".into())], 0, 0, 5_000);
    e.add(vec![KeyValue::Str("Hamlet".into())], 0, 0, 1);
    let r = release(&c, e).expect("release");
    let keys: Vec<_> = r
        .rows()
        .iter()
        .map(|row| match &row[0] {
            Cell::Key { value } => value.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [Some("Lyon".to_string())]);
    assert!(!r.notes().is_empty());
}

#[test]
fn a_median_with_generous_epsilon_lands_near_the_truth() {
    let c = cost(planned("SELECT MEDIAN(age) FROM patients", opts(10.0, 0.0))).expect("costs");
    let mut e = ExactResult::new(measures(&c.plan));
    // 1000 people aged 30..=49, evenly: the median is about 39.5.
    for age in 30..50 {
        e.add(Vec::new(), 0, age as usize, 50);
    }
    let r = release(&c, e).expect("release");
    match &r.rows()[0][0] {
        Cell::Value {
            value, rank_error, ..
        } => {
            assert!((35.0..=44.0).contains(value), "median {value}");
            assert!(rank_error.is_some_and(|re| re > 0.0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn averages_and_variances_are_clamped_to_the_bounds_and_cover_the_truth() {
    let c = cost(planned(
        "SELECT AVG(age), VARIANCE(age) FROM patients",
        opts(4.0, 0.0),
    ))
    .expect("costs");
    // 10 000 people, all aged 40 or 60 in equal numbers: mean 50, sample variance ~100.
    let m = measures(&c.plan);
    let mut e = ExactResult::new(m.clone());
    let idx = |want: &crate::exact::Measure| m.iter().position(|x| x == want).expect("measure");
    let b = Bounds {
        lo: 0.0,
        hi: 120.0,
        integer: true,
    };
    let sum = crate::exact::Measure::sum("age", b);
    let sq = crate::exact::Measure::sum_squares("age", b);
    let count = crate::exact::Measure::NonNull("age".into());
    let (fs, fq) = match (&sum, &sq) {
        (
            crate::exact::Measure::Sum { fixed: a, .. },
            crate::exact::Measure::SumSquares { fixed: q, .. },
        ) => (*a, *q),
        _ => unreachable!(),
    };
    e.add(
        Vec::new(),
        idx(&sum),
        0,
        5_000 * fs.apply(40.0) + 5_000 * fs.apply(60.0),
    );
    e.add(
        Vec::new(),
        idx(&sq),
        0,
        5_000 * fq.apply(40.0).pow(2) + 5_000 * fq.apply(60.0).pow(2),
    );
    e.add(Vec::new(), idx(&count), 0, 10_000);
    let r = release(&c, e).expect("release");
    let (avg, var) = (&r.rows()[0][0], &r.rows()[0][1]);
    match avg {
        Cell::Value {
            value,
            low: Some(l),
            high: Some(h),
            ..
        } => {
            assert!((value - 50.0).abs() < 1.0, "{value}");
            assert!(*l <= 50.0 && 50.0 <= *h && *l >= 0.0 && *h <= 120.0);
        }
        other => panic!("{other:?}"),
    }
    match var {
        Cell::Value {
            value,
            low: Some(l),
            high: Some(h),
            ..
        } => {
            assert!((value - 100.0).abs() < 30.0, "{value}");
            assert!(*l <= 100.01 && 100.0 <= *h, "[{l}, {h}]");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gaussian_is_chosen_when_it_is_less_noisy_and_accounted_in_zcdp() {
    let sql = "SELECT COUNT(*), SUM(age), AVG(age), AVG(income), SUM(income), VARIANCE(age) FROM patients";
    let c = cost(planned(sql, opts(1.0, 1e-5))).expect("costs");
    assert_eq!(c.mechanism, Mechanism::Gaussian);
    assert!(c.epsilon <= 1.0 && c.delta <= 1e-5);
    let lap = cost(planned(
        sql,
        QueryOptions {
            mechanism: MechanismChoice::Laplace,
            ..opts(1.0, 1e-5)
        },
    ))
    .expect("costs");
    assert_eq!(lap.mechanism, Mechanism::Laplace);
    assert_eq!(lap.delta, 0.0, "pure Laplace spends no δ");
}

#[test]
fn order_by_and_limit_apply_to_released_values() {
    let c = cost(planned(
        "SELECT age, COUNT(*) AS n FROM patients GROUP BY age ORDER BY n DESC LIMIT 3",
        opts(50.0, 0.0),
    ))
    .expect("costs");
    let mut e = ExactResult::new(measures(&c.plan));
    e.add(vec![KeyValue::Int(30)], 0, 0, 1_000);
    e.add(vec![KeyValue::Int(31)], 0, 0, 900);
    e.add(vec![KeyValue::Int(70)], 0, 0, 800);
    let r = release(&c, e).expect("release");
    let ages: Vec<_> = r
        .rows()
        .iter()
        .map(|row| match &row[0] {
            Cell::Key { value } => value.clone().unwrap_or_default(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(ages, ["30", "31", "70"]);
}

#[test]
fn work_and_answer_size_are_bounded_before_anything_is_charged() {
    // 121 ages × 2 sexes × 372 months: 90 024 groups, within the key-combination limit.
    let grouped = |aggregates: &str| {
        format!(
            "SELECT age, sex, date_trunc('month', visit), {aggregates} FROM patients \
             GROUP BY age, sex, date_trunc('month', visit)"
        )
    };
    let quantiles = cost(planned(&grouped("MEDIAN(income)"), opts(1.0, 0.0)))
        .expect_err("a quantile histogram per group is too much work");
    assert!(quantiles.0.contains("cells"), "{}", quantiles.0);
    let wide = cost(planned(&grouped("COUNT(*)"), opts(1.0, 0.0)))
        .expect_err("90 024 groups × 4 columns is too large an answer");
    assert!(wide.0.contains("values"), "{}", wide.0);
    // The same shape over coarser keys is fine.
    cost(planned(
        "SELECT age, sex, MEDIAN(income), COUNT(*) FROM patients GROUP BY age, sex",
        opts(1.0, 0.0),
    ))
    .expect("242 groups");
}
