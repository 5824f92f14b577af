//! The promise itself, measured: on neighbouring inputs (one person more or less), the
//! probability of every released value may differ by at most a factor e^ε. Each check draws
//! many releases from the real engine on both inputs and compares the empirical frequencies
//! of every value seen often enough to be estimated well.
//!
//! The engine's noise comes from OpenSSL's CSPRNG and cannot be seeded, so the tolerance is
//! explicit instead: a frequency estimated from at least `MIN_HITS` draws is within 25% of
//! its probability except with probability below 1e-6 per value (a Chernoff bound), and the
//! checks test e^ε·1.25·1.25 rather than e^ε. An attack such as the ones fixed here (an exact
//! membership signal) would show as a ratio of infinity, far outside it.

use std::collections::HashMap;

use veil_dp::exact::measures;
use veil_dp::{Cell, ExactResult, Manifest, QueryOptions};

const DRAWS: usize = 40_000;
const MIN_HITS: usize = 1_500;

fn manifest() -> Manifest {
    Manifest::parse(
        r#"
        [privacy]
        unit = "row"
        [columns.age]
        type = "int"
        bounds = [0, 100]
        "#,
    )
    .expect("manifest")
}

/// The distribution of the first released value of `sql`, when its exact count is `n`.
fn count_distribution(sql: &str, epsilon: f64, n: i64) -> HashMap<i64, usize> {
    let m = manifest();
    let plan = veil_dp::sql::plan(
        sql,
        "t",
        &m,
        QueryOptions {
            epsilon,
            ..QueryOptions::default()
        },
    )
    .expect("plan");
    let costed = veil_dp::cost(plan).expect("cost");
    let mut seen = HashMap::new();
    for _ in 0..DRAWS {
        let mut exact = ExactResult::new(measures(&costed.plan));
        exact.add(Vec::new(), 0, 0, n);
        let released = veil_dp::release(&costed, exact).expect("release");
        let Cell::Value { value, .. } = &released.rows()[0][0] else {
            panic!("a value")
        };
        *seen.entry(value.round() as i64).or_insert(0) += 1;
    }
    seen
}

/// Every value seen at least `MIN_HITS` times on either side has frequencies within the
/// promised ratio (with the estimation tolerance).
fn assert_within_e_epsilon(a: &HashMap<i64, usize>, b: &HashMap<i64, usize>, epsilon: f64) {
    let bound = epsilon.exp() * 1.25 * 1.25;
    let mut checked = 0;
    for (v, &hits_a) in a {
        let hits_b = b.get(v).copied().unwrap_or(0);
        if hits_a.max(hits_b) < MIN_HITS {
            continue;
        }
        let ratio = hits_a.max(hits_b) as f64 / hits_a.min(hits_b).max(1) as f64;
        assert!(
            ratio <= bound,
            "value {v}: {hits_a} vs {hits_b} draws, ratio {ratio} > e^ε bound {bound}"
        );
        checked += 1;
    }
    assert!(checked >= 2, "too few values to compare: {a:?}");
}

#[test]
fn a_count_stays_within_e_epsilon_of_its_neighbour() {
    let sql = "SELECT COUNT(*) FROM t";
    let epsilon = 0.5;
    let a = count_distribution(sql, epsilon, 100);
    let b = count_distribution(sql, epsilon, 101);
    assert_within_e_epsilon(&a, &b, epsilon);
}

#[test]
fn a_validation_matrix_stays_within_e_epsilon_of_its_neighbour() {
    use veil_dp::validation::{ExactValidation, Metric, Task, cost_validation, release_validation};

    let epsilon = 0.5;
    let costed = cost_validation(
        Task::Classification {
            classes: vec!["malignant".into(), "benign".into()],
        },
        vec![Metric::Confusion],
        epsilon,
        0.95,
        &veil_dp::PrivacyUnit::Row,
    )
    .expect("cost");
    let distribution = |with_person: bool| {
        let mut seen: HashMap<i64, usize> = HashMap::new();
        // The matrix noise is OpenDP's (unseeded); this only drives the intervals' bootstrap.
        let mut rng =
            <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(u64::from(with_person));
        for _ in 0..DRAWS {
            let mut exact = ExactValidation::new(&costed);
            for i in 0..200 {
                exact.add_classified(i % 2, Some(i % 2));
            }
            if with_person {
                // The person: a malignant case the model calls benign.
                exact.add_classified(0, Some(1));
            }
            let released = release_validation(&costed, exact, &mut rng).expect("release");
            let cell = released.confusion().expect("matrix").cells[0][1];
            *seen.entry(cell.round() as i64).or_insert(0) += 1;
        }
        seen
    };
    assert_within_e_epsilon(&distribution(true), &distribution(false), epsilon);
}

/// Through the whole pipeline: two neighbouring encrypted datasets (with and without a person
/// who has five rows, where a unit counts at most two), each counted by the real executor
/// (filtering, contribution bounding), then released many times. The two distributions must
/// stay within e^ε: a bounding that let the person count five rows would break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_datasets_stay_within_e_epsilon_through_the_executor() {
    let manifest = Manifest::parse(
        r#"
        [privacy]
        unit = { column = "pid", max_rows = 2 }
        [columns.pid]
        type = "id"
        [columns.age]
        type = "int"
        bounds = [0, 100]
        "#,
    )
    .expect("manifest");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = veil_datasets::Storage::open(
        dir.path(),
        std::sync::Arc::new(veil_crypto::MasterKey::generate()),
    )
    .expect("storage");
    let csv = |with_person: bool| {
        let mut s = String::from("pid,age\n");
        for i in 0..60 {
            s.push_str(&format!("p{},{}\n", i % 30, 20 + i % 50));
        }
        if with_person {
            for _ in 0..5 {
                s.push_str("target,99\n");
            }
        }
        s
    };
    let epsilon = 0.5;
    let plan = veil_dp::sql::plan(
        "SELECT COUNT(*) FROM t WHERE age > 30",
        "t",
        &manifest,
        QueryOptions {
            epsilon,
            ..QueryOptions::default()
        },
    )
    .expect("plan");
    let costed = veil_dp::cost(plan).expect("cost");
    let mut distributions = Vec::new();
    for with_person in [true, false] {
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(csv(
            with_person,
        )))]);
        let stored = storage
            .ingest(
                &manifest,
                veil_datasets::Format::Csv,
                body,
                veil_datasets::Limits {
                    max_upload_bytes: 1 << 20,
                },
            )
            .await
            .expect("ingest");
        let exact = storage
            .execute(&stored.file_id, &stored.wrapped_key, &manifest, &costed)
            .await
            .expect("execute");
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for _ in 0..DRAWS {
            let released = veil_dp::release(&costed, exact.clone()).expect("release");
            let Cell::Value { value, .. } = &released.rows()[0][0] else {
                panic!("a value")
            };
            *seen.entry(value.round() as i64).or_insert(0) += 1;
        }
        distributions.push(seen);
    }
    assert_within_e_epsilon(&distributions[0], &distributions[1], epsilon);
}
