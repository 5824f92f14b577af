//! TLS: a node started with a certificate serves HTTPS only, and a client trusting that
//! certificate's CA talks to it.

use crate::common::*;
use veil_client::{Client, ClientOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_pem = issued.cert.pem();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, issued.signing_key.serialize_pem()).expect("write key");

    let node = TestNode::start_with(Backend::Sqlite, |c| {
        c.tls = Some(veil_server::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    })
    .await;
    assert!(node.url().starts_with("https://localhost:"));

    let trusted = Client::with_options(
        node.url(),
        &ClientOptions {
            ca_cert_pem: Some(cert_pem.into_bytes()),
            timeout: None,
        },
    )
    .expect("client");
    assert_eq!(
        trusted.health().await.expect("health over TLS").status,
        "ok"
    );
    let login = trusted
        .login(OWNER, OWNER_PW)
        .await
        .expect("login over TLS");
    assert_eq!(login.user.email, OWNER);

    // Without trusting the certificate, the client refuses the connection.
    let untrusted = Client::new(node.url()).expect("client");
    assert!(matches!(
        untrusted.health().await,
        Err(veil_client::ClientError::Transport { .. })
    ));
    // Plain HTTP to the TLS port gets no API response.
    let plain = Client::new(&node.url().replace("https://", "http://")).expect("client");
    assert!(plain.health().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_path_is_a_clear_start_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = veil_server::ServerConfig::new(dir.path().join("data"));
    config.admin_password = Some(OWNER_PW.into());
    config.tls = Some(veil_server::TlsFiles {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
    });
    let err = veil_server::prepare(config).await.expect_err("must fail");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
