//! `serve --demo`: sample accounts so a newcomer can try every workflow at once.
//!
//! Idempotent: users that exist are left alone (and their passwords are not shown again).

use veil_core::{Core, CoreError};

/// A demo account created on this start, with its one-time password.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    pub email: String,
    pub role: String,
    pub one_time_password: String,
}

const ACCOUNTS: &[(&str, &str)] = &[
    ("ana@demo.veil", "data-scientist"),
    ("carl@demo.veil", "compliance-officer"),
    ("mo@demo.veil", "model-creator"),
    ("pat@demo.veil", "data-user"),
];

/// The demo data scientist's budget: generous, so the examples in the README all fit.
const DEMO_EPSILON: f64 = 10.0;
const DEMO_DELTA: f64 = 1e-5;

/// Rows in the demo patients dataset.
pub const DEMO_PATIENTS: usize = 5_000;

/// Creates the demo accounts (returned with their one-time passwords, on first creation
/// only) and loads the demo datasets.
pub async fn seed(core: &Core) -> Result<Vec<DemoAccount>, CoreError> {
    core.bootstrap_dataset(
        "patients",
        crate::demo_data::PATIENTS_MANIFEST,
        crate::demo_data::patients_csv(DEMO_PATIENTS),
    )
    .await?;
    core.bootstrap_dataset(
        "breast_cancer",
        include_str!("../../../fixtures/data/breast_cancer.toml"),
        include_bytes!("../../../fixtures/data/breast_cancer.csv").to_vec(),
    )
    .await?;
    core.bootstrap_model(
        "tumour-lr",
        include_bytes!("../../../fixtures/models/breast_cancer_lr.onnx").to_vec(),
    )
    .await?;
    let mut created = Vec::new();
    for (email, role) in ACCOUNTS {
        if let Some(otp) = core.bootstrap_user(email, role).await? {
            if *role == "data-scientist" {
                core.bootstrap_budget(email, DEMO_EPSILON, DEMO_DELTA)
                    .await?;
            }
            created.push(DemoAccount {
                email: (*email).to_string(),
                role: (*role).to_string(),
                one_time_password: otp.expose().to_string(),
            });
        }
    }
    Ok(created)
}
