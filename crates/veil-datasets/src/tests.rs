//! Storage tests on real encrypted files and real DataFusion execution. Results are read
//! through `veil_dp::release` at a huge ε (noise far below 0.5), since exact results are not
//! readable outside the DP engine.

use std::sync::Arc;

use bytes::Bytes;
use veil_crypto::MasterKey;
use veil_dp::{Cell, Manifest, QueryOptions, cost, release, sql};

use super::*;

const MANIFEST: &str = include_str!("../../../fixtures/patients.toml");

fn storage() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s =
        Storage::open(dir.path().join("datasets"), Arc::new(MasterKey::generate())).expect("open");
    (dir, s)
}

fn body(text: &str, chunk: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let chunks: Vec<Result<Bytes, std::io::Error>> = text
        .as_bytes()
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

/// 200 rows: ages 20..=69 (four of each), half F, incomes 1000·age, one city marker.
fn csv() -> String {
    let mut s = String::from("sex,age,income,visit,city\n");
    for i in 0..200 {
        let age = 20 + i % 50;
        let sex = if i % 2 == 0 { "F" } else { "M" };
        let city = if i == 7 {
            "Zyxwvutsrq-Marker"
        } else if i % 3 == 0 {
            ""
        } else {
            "Lyon"
        };
        s.push_str(&format!(
            "{sex},{age},{}.5,2021-0{}-15,{city}\n",
            age * 1000,
            1 + i % 9
        ));
    }
    s
}

async fn answer(s: &Storage, f: &StoredFile, m: &Manifest, query: &str) -> Vec<Vec<Cell>> {
    let plan = sql::plan(
        query,
        "patients",
        m,
        QueryOptions {
            epsilon: 1e5,
            delta: 1e-6,
            ..QueryOptions::default()
        },
    )
    .expect("plan");
    let costed = cost(plan).expect("cost");
    let exact = s
        .execute(&f.file_id, &f.wrapped_key, m, &costed)
        .await
        .expect("execute");
    release(&costed, exact).expect("release").rows().to_vec()
}

fn value(c: &Cell) -> f64 {
    match c {
        Cell::Value { value, .. } => *value,
        other => panic!("{other:?}"),
    }
}

fn files(s: &Storage) -> Vec<String> {
    std::fs::read_dir(s.dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_upload_is_encrypted_at_rest_and_queryable() {
    let (_d, s) = storage();
    let m = Manifest::parse(MANIFEST).expect("manifest");
    let f = s
        .ingest(&m, Format::Csv, body(&csv(), 777), Limits::default())
        .await
        .expect("ingest");
    assert_eq!(f.rows, 200);
    assert_eq!(
        files(&s),
        [format!("{}.parquet", f.file_id)],
        "no temp files left"
    );

    // The distinctive value must not appear anywhere under the data dir, in any encoding a
    // Parquet writer would use (plain bytes; the column name too, since the footer is sealed).
    for entry in std::fs::read_dir(s.dir()).expect("dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        for needle in ["Zyxwvutsrq-Marker", "Lyon", "income"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in plaintext"
            );
        }
    }

    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT COUNT(*), SUM(age), AVG(income) FROM patients",
    )
    .await;
    assert_eq!(value(&rows[0][0]).round(), 200.0);
    let true_sum: f64 = (0..200).map(|i| f64::from(20 + i % 50)).sum();
    assert!((value(&rows[0][1]) - true_sum).abs() < 1.0);
    let true_avg = (0..200)
        .map(|i| f64::from((20 + i % 50) * 1000) + 0.5)
        .sum::<f64>()
        / 200.0;
    assert!(
        (value(&rows[0][2]) - true_avg).abs() < 1.0,
        "{}",
        value(&rows[0][2])
    );

    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT sex, COUNT(*) FROM patients WHERE age >= 60 GROUP BY sex",
    )
    .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        value(&rows[0][1]).round() + value(&rows[1][1]).round(),
        40.0
    );

    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT date_trunc('month', visit) AS m, COUNT(*) FROM patients WHERE visit < '2021-03-01' GROUP BY m ORDER BY m LIMIT 400",
    )
    .await;
    let nonzero: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| value(&r[1]).round() != 0.0)
        .map(|r| match &r[0] {
            Cell::Key { value: Some(k) } => (k.clone(), value(&r[1]).round()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        nonzero,
        [("2021-01".to_string(), 23.0), ("2021-02".to_string(), 23.0)]
    );

    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT MEDIAN(age), QUANTILE(income, 0.9) FROM patients",
    )
    .await;
    assert!(
        (value(&rows[0][0]) - 44.5).abs() <= 1.0,
        "median {}",
        value(&rows[0][0])
    );
    assert!(
        (value(&rows[0][1]) - 65_000.0).abs() < 2_000.0,
        "p90 {}",
        value(&rows[0][1])
    );

    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT city, COUNT(*) FROM patients GROUP BY city",
    )
    .await;
    let cities: Vec<_> = rows
        .iter()
        .map(|r| match &r[0] {
            Cell::Key { value } => value.clone(),
            _ => None,
        })
        .collect();
    assert!(cities.contains(&Some("Lyon".into())), "{cities:?}");
    assert!(
        !cities.contains(&Some("Zyxwvutsrq-Marker".into())),
        "a single row must not pass the threshold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_are_reported_and_nothing_is_stored() {
    let (_d, s) = storage();
    let m = Manifest::parse(MANIFEST).expect("manifest");
    let text = "age,sex,income,visit,city\n30,F,10.0,2020-01-01,x\n130,F,10.0,2020-01-01,x\n40,X,10.0,2020-01-01,x\n50,M,-5,2020-01-01,x\n60,M,5,1999-12-31,x\n";
    match s
        .ingest(&m, Format::Csv, body(text, 10), Limits::default())
        .await
    {
        Err(IngestError::Rejected { violations, count }) => {
            assert_eq!(count, 4);
            let rows: Vec<u64> = violations.iter().map(|v| v.row).collect();
            assert_eq!(rows, [2, 3, 4, 5], "{violations:?}");
            assert!(
                violations[0].reason.contains("outside the bounds [0, 120]"),
                "{violations:?}"
            );
            assert!(
                violations[1].reason.contains("declared categories"),
                "{violations:?}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(files(&s).is_empty(), "{:?}", files(&s));

    for (text, needle) in [
        (
            "age,sex,income,visit\n1,F,1,2020-01-01\n",
            "lacks the declared column \"city\"",
        ),
        ("age,sex,income,visit,city,extra\n", "does not declare"),
        (
            "age,sex,income,visit,city\n1,F,abc,2020-01-01,x\n",
            "parsing",
        ),
        ("age,sex,income,visit,city\n1,F,1\n", "fields"),
        ("", "empty"),
    ] {
        match s
            .ingest(&m, Format::Csv, body(text, 5), Limits::default())
            .await
        {
            Err(IngestError::Malformed(msg)) => assert!(msg.contains(needle), "{text:?} → {msg}"),
            other => panic!("{text:?}: expected Malformed, got {other:?}"),
        }
        assert!(files(&s).is_empty());
    }

    let big = csv();
    match s
        .ingest(
            &m,
            Format::Csv,
            body(&big, 100),
            Limits {
                max_upload_bytes: 1000,
            },
        )
        .await
    {
        Err(IngestError::TooLarge { limit: 1000 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(files(&s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_uploads_are_spooled_encrypted_and_cast_to_the_manifest() {
    use arrow::array::{Float32Array, Int32Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let (_d, s) = storage();
    let m = Manifest::parse(
        "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"\nbounds = [0, 120]\n[columns.w]\ntype = \"float\"\nbounds = [0, 10]\n[columns.sex]\ntype = \"category\"\ncategories = [\"F\", \"M\"]",
    )
    .expect("manifest");
    // Narrower types than the manifest's (Int32, Float32): they are widened on the way in.
    let schema = Arc::new(Schema::new(vec![
        Field::new("sex", DataType::Utf8, false),
        Field::new("age", DataType::Int32, false),
        Field::new("w", DataType::Float32, false),
    ]));
    let n = 100_000;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| if i % 4 == 0 { "M" } else { "F" }),
            )),
            Arc::new(Int32Array::from_iter_values((0..n).map(|i| i % 100))),
            Arc::new(Float32Array::from_iter_values((0..n).map(|_| 2.5))),
        ],
    )
    .expect("batch");
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let body = futures::stream::iter(
        buf.chunks(70_000)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let f = s
        .ingest(&m, Format::Parquet, body, Limits::default())
        .await
        .expect("ingest");
    assert_eq!(f.rows, n as u64);
    assert_eq!(files(&s).len(), 1, "the spool is gone");
    let rows = answer(
        &s,
        &f,
        &m,
        "SELECT sex, COUNT(*), SUM(w) FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(value(&rows[0][1]).round(), 75_000.0);
    assert_eq!(value(&rows[1][1]).round(), 25_000.0);
    assert!((value(&rows[1][2]) - 62_500.0).abs() < 1.0);

    let garbage = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(
        b"not parquet at all",
    ))]);
    match s
        .ingest(&m, Format::Parquet, garbage, Limits::default())
        .await
    {
        Err(IngestError::Malformed(msg)) => assert!(msg.contains("Parquet"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(files(&s).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_unit_contributes_at_most_max_rows() {
    let (_d, s) = storage();
    let m = Manifest::parse(
        "[privacy]\nunit = { column = \"pid\", max_rows = 3 }\n[columns.pid]\ntype = \"id\"\n[columns.x]\ntype = \"int\"\nbounds = [0, 10]",
    )
    .expect("manifest");
    // p1 has 50 rows, p2 has 2, p3 has 1: bounded counts are 3 + 2 + 1 = 6.
    let mut text = String::from("pid,x\n");
    for _ in 0..50 {
        text.push_str("p1,10\n");
    }
    text.push_str("p2,1\np2,1\np3,1\n");
    let f = s
        .ingest(&m, Format::Csv, body(&text, 64), Limits::default())
        .await
        .expect("ingest");
    let rows = answer(&s, &f, &m, "SELECT COUNT(*), SUM(x) FROM patients").await;
    assert_eq!(value(&rows[0][0]).round(), 6.0);
    assert_eq!(value(&rows[0][1]).round(), 33.0);
}

/// Which rows of a unit are kept is a function of that unit's rows (and the query's key)
/// only: shuffling the file, or adding another person, changes nothing for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_a_unit_keeps_do_not_depend_on_other_rows() {
    let m = Manifest::parse(
        "[privacy]\nunit = { column = \"pid\", max_rows = 2 }\n[columns.pid]\ntype = \"id\"\n[columns.x]\ntype = \"int\"\nbounds = [0, 1000]",
    )
    .expect("manifest");
    // 20 people with 12 distinct values each; 2 rows of each are kept.
    let mut rows: Vec<String> = (0..20)
        .flat_map(|p| (0..12).map(move |k| format!("p{p},{}\n", p * 37 + k * 3)))
        .collect();
    let csv = |rows: &[String]| format!("pid,x\n{}", rows.concat());
    let key = [7u8; 32];
    let (_d, s) = storage();
    let s = s.with_row_key(key);
    let sum = |text: String| {
        let s = &s;
        let m = &m;
        async move {
            let f = s
                .ingest(m, Format::Csv, body(&text, 100), Limits::default())
                .await
                .expect("ingest");
            value(&answer(s, &f, m, "SELECT SUM(x) FROM patients").await[0][0]).round()
        }
    };
    let original = sum(csv(&rows)).await;
    // The same rows in another order (a different interleaving of people and batches).
    rows.reverse();
    rows.rotate_left(77);
    assert_eq!(
        sum(csv(&rows)).await,
        original,
        "order changed the kept rows"
    );
    // One more person: the sum grows by exactly what that person's kept rows hold.
    let newcomer: Vec<String> = (0..12).map(|k| format!("zz,{}\n", 900 + k)).collect();
    let alone = sum(csv(&newcomer)).await;
    let mut with = rows.clone();
    for (i, r) in newcomer.into_iter().enumerate() {
        with.insert(i * 19, r);
    }
    assert_eq!(sum(csv(&with)).await, original + alone);
    // A different key keeps different rows (the choice is the key's, not the file's).
    let (_d2, other) = storage();
    let other = other.with_row_key([8u8; 32]);
    let f = other
        .ingest(&m, Format::Csv, body(&csv(&rows), 100), Limits::default())
        .await
        .expect("ingest");
    let rekeyed = value(&answer(&other, &f, &m, "SELECT SUM(x) FROM patients").await[0][0]).round();
    assert_ne!(rekeyed, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cannot_be_read_with_another_datasets_key_or_after_removal() {
    let (_d, s) = storage();
    let m = Manifest::parse(MANIFEST).expect("manifest");
    let a = s
        .ingest(&m, Format::Csv, body(&csv(), 4096), Limits::default())
        .await
        .expect("a");
    let b = s
        .ingest(&m, Format::Csv, body(&csv(), 4096), Limits::default())
        .await
        .expect("b");
    let plan = sql::plan(
        "SELECT COUNT(*) FROM patients",
        "patients",
        &m,
        QueryOptions::default(),
    )
    .expect("plan");
    let costed = cost(plan).expect("cost");
    assert!(
        s.execute(&a.file_id, &b.wrapped_key, &m, &costed)
            .await
            .is_err()
    );
    s.remove(&a.file_id).expect("remove");
    assert!(
        s.execute(&a.file_id, &a.wrapped_key, &m, &costed)
            .await
            .is_err()
    );
    assert!(s.remove("../../etc/passwd").is_err());
}

/// Every column type at both ends of its declared bounds (and null where allowed), with an
/// id unit: the dataset the properties below run on.
const EXTREMES: &str = r#"
    [privacy]
    unit = { column = "pid", max_rows = 2 }
    [columns.pid]
    type = "id"
    [columns.age]
    type = "int"
    bounds = [0, 120]
    [columns.big]
    type = "int"
    bounds = [-1000000000000000, 1000000000000000]
    [columns.income]
    type = "float"
    bounds = [-1000000000000000.0, 1000000000000000.0]
    [columns.sex]
    type = "category"
    categories = ["F", "M"]
    nullable = true
    [columns.smoker]
    type = "bool"
    nullable = true
    [columns.born]
    type = "date"
    bounds = ["0001-01-01", "0400-12-31"]
    [columns.until]
    type = "date"
    bounds = ["9990-01-01", "9999-12-31"]
    [columns.city]
    type = "text"
    nullable = true
"#;

fn extremes_csv() -> String {
    let mut s = String::from("pid,age,big,income,sex,smoker,born,until,city\n");
    let lo = "0,-1000000000000000,-1000000000000000.0,F,false,0001-01-01,9990-01-01,Lyon";
    let hi = "120,1000000000000000,1000000000000000.0,M,true,0400-12-31,9999-12-31,Zagreb";
    let mid = "60,0,0.5,,,0200-02-28,9995-06-15,";
    for (i, row) in [lo, hi, mid, lo, hi, mid, hi].iter().enumerate() {
        s.push_str(&format!("p{},{row}\n", i % 4));
    }
    s
}

/// Random queries from the supported grammar (and just outside it), with literals at, inside
/// and beyond the declared bounds.
fn random_query(rng: &mut impl rand::Rng) -> (String, QueryOptions) {
    use rand::seq::IndexedRandom;
    let numeric = ["age", "big", "income", "born", "until"];
    let literal = |rng: &mut dyn rand::RngCore, col: &str| -> String {
        let pick = |rng: &mut dyn rand::RngCore, v: &[&str]| {
            v[(rng.next_u32() as usize) % v.len()].to_string()
        };
        match col {
            "age" => pick(rng, &["0", "120", "60", "-1", "121", "99999999999"]),
            "big" => pick(
                rng,
                &[
                    "-1000000000000000",
                    "1000000000000000",
                    "0",
                    "9223372036854775807",
                ],
            ),
            "income" => pick(rng, &["-1000000000000000.0", "1e15", "0.5", "1e300"]),
            "born" => pick(rng, &["'0001-01-01'", "'0400-12-31'", "'0200-02-28'"]),
            "until" => pick(rng, &["'9990-01-01'", "'9999-12-31'", "'9995-06-15'"]),
            "sex" => pick(rng, &["'F'", "'M'", "'X'"]),
            "city" => pick(rng, &["'Lyon'", "''", "'O''Brien'"]),
            _ => pick(rng, &["TRUE", "FALSE"]),
        }
    };
    fn filter(
        rng: &mut dyn rand::RngCore,
        depth: u32,
        lit: &dyn Fn(&mut dyn rand::RngCore, &str) -> String,
    ) -> String {
        let cols = ["age", "big", "income", "born", "until", "sex", "city"];
        let col = cols[(rng.next_u32() as usize) % cols.len()];
        let choice = if depth == 0 {
            rng.next_u32() % 5
        } else {
            rng.next_u32() % 8
        };
        match choice {
            0 => format!(
                "{col} {} {}",
                ["=", "<>", "<", "<=", ">", ">="][(rng.next_u32() % 6) as usize],
                lit(rng, col)
            ),
            1 => format!("{col} IN ({}, {})", lit(rng, col), lit(rng, col)),
            2 => format!("{col} BETWEEN {} AND {}", lit(rng, col), lit(rng, col)),
            3 => format!(
                "{col} IS {}NULL",
                if rng.next_u32().is_multiple_of(2) {
                    "NOT "
                } else {
                    ""
                }
            ),
            4 => "smoker".into(),
            5 => format!("NOT ({})", filter(rng, depth - 1, lit)),
            6 => format!(
                "({}) AND ({})",
                filter(rng, depth - 1, lit),
                filter(rng, depth - 1, lit)
            ),
            _ => format!(
                "({}) OR {}",
                filter(rng, depth - 1, lit),
                filter(rng, depth - 1, lit)
            ),
        }
    }
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        let k = match rng.random_range(0..7) {
            0 => "age".to_string(),
            1 => "sex".into(),
            2 => "smoker".into(),
            3 => "city".into(),
            4 => format!(
                "date_trunc('{}', born)",
                ["year", "month", "day"].choose(rng).expect("unit")
            ),
            5 => format!(
                "date_trunc('{}', until)",
                ["year", "month", "day"].choose(rng).expect("unit")
            ),
            _ => "big".into(),
        };
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut items: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS k{i}"))
        .collect();
    for _ in 0..rng.random_range(1..4) {
        let col = numeric.choose(rng).expect("column");
        items.push(match rng.random_range(0..8) {
            0 => "COUNT(*)".into(),
            1 => format!(
                "COUNT({})",
                ["sex", "city", "smoker", "age"].choose(rng).expect("c")
            ),
            2 => format!("SUM({col})"),
            3 => format!("AVG({col})"),
            4 => format!("VARIANCE({col})"),
            5 => format!("STDDEV({col})"),
            6 => format!("MEDIAN({col})"),
            _ => format!(
                "QUANTILE({col}, {})",
                [0.0, 0.01, 0.5, 1.0].choose(rng).expect("q")
            ),
        });
    }
    let mut sql = format!("SELECT {} FROM patients", items.join(", "));
    if rng.random_bool(0.7) {
        let depth = rng.random_range(0..5);
        sql.push_str(&format!(" WHERE {}", filter(rng, depth, &literal)));
    }
    if !keys.is_empty() {
        let g: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
        sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
        if rng.random_bool(0.3) {
            sql.push_str(" ORDER BY k0 DESC LIMIT 3");
        }
    }
    let options = QueryOptions {
        epsilon: *[1e-6, 0.01, 1.0, 1e3, 1e6].choose(rng).expect("ε"),
        delta: *[0.0, 1e-9].choose(rng).expect("δ"),
        ..QueryOptions::default()
    };
    (sql, options)
}

/// Every plan the validator accepts executes and releases, on values at both ends of every
/// declared bound: a query cannot be charged and then fail (which would tell whether a row
/// holds an extreme value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_plan_executes_on_values_at_the_bounds() {
    use rand::SeedableRng;
    let (_d, s) = storage();
    let m = Manifest::parse(EXTREMES).expect("manifest");
    let f = s
        .ingest(
            &m,
            Format::Csv,
            body(&extremes_csv(), 50),
            Limits::default(),
        )
        .await
        .expect("ingest");
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..400 {
        let (query, options) = random_query(&mut rng);
        let Ok(costed) = sql::plan(&query, "patients", &m, options).and_then(cost) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let exact = s
            .execute(&f.file_id, &f.wrapped_key, &m, &costed)
            .await
            .unwrap_or_else(|e| panic!("accepted but failed: {query} ({options:?}): {e}"));
        release(&costed, exact)
            .unwrap_or_else(|e| panic!("accepted but not released: {query}: {e}"));
    }
    assert!(
        accepted >= 100,
        "the generator is degenerate: {accepted} accepted, {refused} refused"
    );
}

/// Grouping by each date bucket at both ends of the calendar finds the rows there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_buckets_at_the_ends_of_the_calendar_count_their_rows() {
    let (_d, s) = storage();
    let m = Manifest::parse(EXTREMES).expect("manifest");
    let f = s
        .ingest(
            &m,
            Format::Csv,
            body(&extremes_csv(), 50),
            Limits::default(),
        )
        .await
        .expect("ingest");
    for (query, bucket, rows) in [
        (
            "SELECT date_trunc('year', until) AS y, COUNT(*) FROM patients GROUP BY y",
            "9999",
            3.0,
        ),
        (
            "SELECT date_trunc('month', until) AS y, COUNT(*) FROM patients GROUP BY y",
            "9999-12",
            3.0,
        ),
        (
            "SELECT date_trunc('day', until) AS y, COUNT(*) FROM patients GROUP BY y",
            "9999-12-31",
            3.0,
        ),
        (
            "SELECT date_trunc('year', born) AS y, COUNT(*) FROM patients GROUP BY y",
            "0001",
            2.0,
        ),
        (
            "SELECT date_trunc('month', born) AS y, COUNT(*) FROM patients GROUP BY y",
            "0001-01",
            2.0,
        ),
    ] {
        let out = answer(&s, &f, &m, query).await;
        let row = out
            .iter()
            .find(|r| matches!(&r[0], Cell::Key { value: Some(v) } if v == bucket))
            .unwrap_or_else(|| panic!("{query}: no bucket {bucket}"));
        assert_eq!(value(&row[1]).round(), rows, "{query}");
    }
}
