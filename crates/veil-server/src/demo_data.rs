//! The bundled demo dataset: synthetic patients, generated deterministically so every demo
//! node holds the same (entirely fictional) rows.

use rand::{Rng, SeedableRng};

pub const PATIENTS_MANIFEST: &str = r#"description = "Synthetic hospital patients (generated, fictional)"

[privacy]
unit = "row"

[columns.age]
type = "int"
bounds = [0, 110]
description = "Age at the visit, in years"

[columns.sex]
type = "category"
categories = ["F", "M"]

[columns.income]
type = "float"
bounds = [0.0, 500000.0]
description = "Yearly household income"

[columns.bmi]
type = "float"
bounds = [12.0, 60.0]

[columns.diagnosis]
type = "category"
categories = ["healthy", "diabetes", "hypertension", "asthma", "cancer"]

[columns.region]
type = "category"
categories = ["north", "south", "east", "west"]

[columns.smoker]
type = "bool"

[columns.visit]
type = "date"
bounds = ["2015-01-01", "2025-12-31"]
"#;

/// `rows` synthetic patients as CSV (with a header), from a fixed seed.
pub fn patients_csv(rows: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e11_da7a);
    let mut out = String::with_capacity(rows * 64);
    out.push_str("age,sex,income,bmi,diagnosis,region,smoker,visit\n");
    let diagnoses = ["healthy", "diabetes", "hypertension", "asthma", "cancer"];
    let regions = ["north", "south", "east", "west"];
    for _ in 0..rows {
        // Sums of uniforms give bell-shaped values without extra dependencies.
        let bell =
            |rng: &mut rand::rngs::StdRng| (0..6).map(|_| rng.random::<f64>()).sum::<f64>() / 6.0;
        let age = (bell(&mut rng) * 100.0).round().clamp(0.0, 110.0) as i64;
        let sex = if rng.random_bool(0.51) { "F" } else { "M" };
        let income = (15_000.0
            + bell(&mut rng) * 90_000.0
            + if rng.random_bool(0.05) {
                150_000.0
            } else {
                0.0
            })
        .clamp(0.0, 500_000.0);
        let smoker = rng.random_bool(0.22);
        let bmi =
            (18.0 + bell(&mut rng) * 20.0 + if age > 50 { 2.0 } else { 0.0 }).clamp(12.0, 60.0);
        let risk =
            age as f64 / 110.0 + if smoker { 0.2 } else { 0.0 } + (bmi - 25.0).max(0.0) / 40.0;
        let diagnosis = if rng.random::<f64>() > risk * 0.8 {
            "healthy"
        } else {
            diagnoses[1 + rng.random_range(0..4)]
        };
        let region = regions[rng.random_range(0..4)];
        let day = rng.random_range(0..4017);
        // 16 436 days after 1970-01-01 is 2015-01-01.
        let visit = veil_dp::manifest::format_date(16_436 + day);
        out.push_str(&format!(
            "{age},{sex},{income:.2},{bmi:.1},{diagnosis},{region},{smoker},{visit}\n"
        ));
    }
    out.into_bytes()
}
