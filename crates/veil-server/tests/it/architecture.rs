//! The layering rules of ARCHITECTURE.md, checked on the manifests so a stray dependency
//! fails the build instead of slowly eroding the design.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/<name> lives two levels below the root")
        .to_path_buf()
}

/// crate name → (normal dependencies, manifest text).
fn manifests() -> BTreeMap<String, (BTreeSet<String>, toml::Table)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(workspace_root().join("crates")).expect("crates dir") {
        let dir = entry.expect("entry").path();
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let manifest: toml::Table = toml::from_str(&text).expect("valid toml");
        let name = manifest["package"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        assert_eq!(
            dir.file_name().and_then(|n| n.to_str()),
            Some(name.as_str()),
            "folder name = crate name"
        );
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        out.insert(name, (deps, manifest));
    }
    out
}

/// Every crate reachable from `start` through internal normal dependencies, and every
/// external crate those depend on directly.
fn closure(
    all: &BTreeMap<String, (BTreeSet<String>, toml::Table)>,
    start: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_string()];
    let mut externals = BTreeSet::new();
    while let Some(c) = stack.pop() {
        if !seen.insert(c.clone()) {
            continue;
        }
        for d in &all[&c].0 {
            if all.contains_key(d) {
                stack.push(d.clone());
            } else {
                externals.insert(d.clone());
            }
        }
    }
    externals.extend(seen);
    externals
}

#[test]
fn layers_only_reach_what_they_may_know() {
    let all = manifests();
    let forbidden: &[(&str, &[&str])] = &[
        (
            "veil-types",
            &["tokio", "axum", "sqlx", "reqwest", "clap", "veil-crypto"],
        ),
        (
            "veil-crypto",
            &["tokio", "axum", "sqlx", "reqwest", "clap", "tracing"],
        ),
        ("veil-store", &["axum", "sqlx", "reqwest", "clap"]),
        (
            // The encrypted-inference engine: maths on ciphertexts, no IO, no runtime.
            "veil-fhe",
            &[
                "tokio",
                "axum",
                "sqlx",
                "reqwest",
                "clap",
                "tracing",
                "veil-store",
                "veil-core",
            ],
        ),
        (
            "veil-core",
            &[
                "axum",
                "sqlx",
                "reqwest",
                "clap",
                "hyper",
                "veil-store-sql",
                "veil-store-sqlite",
                "veil-store-postgres",
            ],
        ),
        (
            "veil-api-types",
            &["tokio", "axum", "sqlx", "veil-core", "veil-store"],
        ),
        (
            "veil-api",
            &[
                "sqlx",
                "reqwest",
                "clap",
                "veil-store-sql",
                "veil-store-sqlite",
                "veil-store-postgres",
            ],
        ),
        (
            "veil-client",
            &["axum", "sqlx", "veil-core", "veil-store", "clap"],
        ),
    ];
    // The engines: their own maths, no IO, no runtime, nothing above them.
    for engine in ["veil-crypto", "veil-dp", "veil-onnx", "veil-ml", "veil-fhe"] {
        let reach = closure(&all, engine);
        for b in [
            "tokio",
            "axum",
            "sqlx",
            "reqwest",
            "clap",
            "veil-store",
            "veil-core",
            "veil-datasets",
        ] {
            assert!(
                !reach.contains(b),
                "the engine {engine} must not depend on {b} (ARCHITECTURE.md)"
            );
        }
    }
    // The edges reach the store only through veil-core.
    for edge in ["veil-api", "veil-client", "veil"] {
        let direct = &all[edge].0;
        for b in ["veil-store", "veil-store-sql"] {
            assert!(
                !direct.contains(b),
                "{edge} must not use {b} directly: veil-core names what it returns"
            );
        }
    }
    for (krate, banned) in forbidden {
        let reach = closure(&all, krate);
        for b in *banned {
            assert!(
                !reach.contains(*b),
                "{krate} must not depend on {b} (ARCHITECTURE.md)"
            );
        }
    }
    // Only the store backends speak SQL, only the API crate speaks axum.
    for (name, (deps, _)) in &all {
        if deps.contains("sqlx") {
            assert!(
                name.starts_with("veil-store-"),
                "{name} must not use sqlx directly"
            );
        }
        if deps.contains("axum") {
            assert_eq!(name, "veil-api", "{name} must not use axum directly");
        }
        assert!(
            !deps.contains("veil-store-conformance"),
            "{name}: the store conformance suite is dev-only (no product build links it)"
        );
    }
}

#[test]
fn the_fhe_client_side_builds_without_an_onnx_reader() {
    let all = manifests();
    let manifest = &all["veil-fhe"].1;
    let deps = manifest["dependencies"]
        .as_table()
        .expect("veil-fhe has dependencies");
    assert!(
        !deps.contains_key("tract-onnx"),
        "veil-fhe reads ONNX only through veil-onnx, behind its `compiler` feature"
    );
    let onnx = &deps["veil-onnx"];
    assert_eq!(
        onnx.get("optional").and_then(toml::Value::as_bool),
        Some(true),
        "veil-fhe's ONNX reader must be optional (the `compiler` feature)"
    );
    let default = manifest
        .get("features")
        .and_then(|f| f.get("default"))
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    assert!(
        !default.iter().any(|f| f.as_str() == Some("compiler")),
        "the compiler is asked for by the node's crates, never on by default"
    );
    // Only veil-onnx decodes ONNX protobufs for the others.
    for (name, (deps, _)) in &all {
        if deps.contains("tract-onnx") {
            assert!(
                matches!(name.as_str(), "veil-onnx" | "veil-ml"),
                "{name} must read ONNX through veil-onnx"
            );
        }
    }
}

#[test]
fn test_and_product_builds_lower_the_same_cold_crates() {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("root manifest");
    let root: toml::Table = toml::from_str(&text).expect("valid toml");
    let lowered = |profile: &str| -> BTreeSet<String> {
        root["profile"][profile]["package"]
            .as_table()
            .expect("per-package settings")
            .iter()
            .filter(|(_, t)| t.get("opt-level").and_then(toml::Value::as_integer) == Some(1))
            .map(|(name, _)| name.clone())
            .collect()
    };
    let ours = |name: &String| name == "veil" || name.starts_with("veil-");
    let (dev, release) = (lowered("dev"), lowered("release"));
    let external = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter().filter(|n| !ours(n)).cloned().collect()
    };
    assert!(
        !external(&release).is_empty(),
        "the cold-crate list is in the root Cargo.toml"
    );
    assert_eq!(
        external(&dev),
        external(&release),
        "tests and the product build the same dependencies at opt-level 1"
    );
    // Veil's own crates are lowered in release only (dev builds them at opt-level 0), and
    // only the control plane: never an engine, which runs per row.
    for name in release.iter().filter(|n| ours(n)) {
        assert!(
            !matches!(
                name.as_str(),
                "veil-dp" | "veil-datasets" | "veil-ml" | "veil-fhe" | "veil-onnx" | "veil-crypto"
            ),
            "{name} is an engine and stays at opt-level 3"
        );
    }
}

#[test]
fn external_dependencies_are_pinned_once_in_the_workspace() {
    for (name, (_, manifest)) in manifests() {
        for section in ["dependencies", "dev-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for (dep, spec) in deps {
                let inherited = spec
                    .as_table()
                    .and_then(|t| t.get("workspace"))
                    .and_then(toml::Value::as_bool)
                    == Some(true);
                assert!(
                    inherited,
                    "{name}: {section}.{dep} must use `workspace = true` (versions live in the root Cargo.toml)"
                );
            }
        }
    }
}

#[test]
fn architecture_md_names_every_crate() {
    let doc =
        std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for name in manifests().keys() {
        assert!(
            doc.contains(&format!("`{name}`")),
            "ARCHITECTURE.md must describe `{name}`"
        );
    }
}

#[test]
fn the_product_binary_links_no_test_or_benchmark_code() {
    let all = manifests();
    let product = closure(&all, "veil");
    for dev_only in ["veil-bench", "veil-store-conformance", "veil-hostile"] {
        assert!(
            !product.contains(dev_only),
            "veil must not depend on {dev_only}"
        );
    }
    // The `testing` and `bench` features are switched on by dev-dependencies and by
    // veil-bench only, never by a crate the product binary is built from. (That holds for the
    // product build, `cargo build --release` of the default member; a `--workspace` build
    // unifies features across members and is for tests.)
    for name in product.iter().filter(|c| all.contains_key(*c)) {
        let Some(deps) = all[name].1.get("dependencies").and_then(|d| d.as_table()) else {
            continue;
        };
        for (dep, spec) in deps {
            let features = spec
                .get("features")
                .and_then(|f| f.as_array())
                .cloned()
                .unwrap_or_default();
            for f in features {
                assert!(
                    !matches!(f.as_str(), Some("testing" | "bench")),
                    "{name} enables {dep}'s {f} feature in the product"
                );
            }
        }
    }
}
