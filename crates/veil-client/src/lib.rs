//! A typed client for a Veil node's REST API (`/api/v1`).
//!
//! One method per endpoint, taking and returning the wire types of `veil-api-types`. Errors
//! from the node arrive as [`ClientError::Api`] with the stable code, so callers can match on
//! [`ErrorCode`] rather than on messages.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;
use veil_api_types::*;

pub use veil_api_types;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after_secs: Option<u64>,
        details: Option<serde_json::Value>,
    },
    /// The node could not be reached, or the connection failed.
    #[error("cannot reach the node at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The node answered with something that is not Veil's API.
    #[error("unexpected response from the node ({status}): {detail}")]
    Protocol { status: u16, detail: String },
    #[error("invalid server address {0:?}: use e.g. http://127.0.0.1:7070")]
    BadUrl(String),
    #[error("invalid TLS certificate: {0}")]
    BadCertificate(String),
}

impl ClientError {
    /// The stable error code, if the node sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => ErrorCode::parse(code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Connection settings.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra PEM-encoded CA certificate to trust (for a node with a private or self-signed
    /// certificate).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Per-request timeout; default 120 s.
    pub timeout: Option<Duration>,
}

#[derive(Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Percent-encodes one path segment (emails contain `@`, `+`).
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Client {
    pub fn new(server: &str) -> Result<Self> {
        Self::with_options(server, &ClientOptions::default())
    }

    pub fn with_options(server: &str, options: &ClientOptions) -> Result<Self> {
        // reqwest is built without a bundled crypto provider; use ring, like the server.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut base = Url::parse(server.trim()).map_err(|_| ClientError::BadUrl(server.into()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(ClientError::BadUrl(server.into()));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout.unwrap_or(Duration::from_secs(120)))
            .user_agent(concat!("veil-client/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        Ok(Self {
            base,
            http,
            token: None,
        })
    }

    /// A copy of this client that sends `token` as its bearer token.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|_| ClientError::BadUrl(path.into()))?;
        let mut rb = self.http.request(method, url);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        Ok(rb)
    }

    async fn send(&self, rb: RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                retry_after_secs: body.error.retry_after_secs,
                details: body.error.details,
            }),
            Err(_) => Err(ClientError::Protocol {
                status,
                detail: text.chars().take(200).collect(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: self.base.to_string(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            status,
            detail: format!("invalid JSON: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(Method::GET, path)?).await
    }

    async fn with_body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.json(self.request(method, path)?.json(body)).await
    }

    async fn no_content(&self, rb: RequestBuilder) -> Result<()> {
        let resp = self.send(rb).await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(ClientError::Protocol {
                status: resp.status().as_u16(),
                detail: "expected 204 No Content".into(),
            });
        }
        Ok(())
    }

    // ---- system

    pub async fn health(&self) -> Result<Health> {
        self.get("healthz").await
    }

    pub async fn metrics(&self) -> Result<String> {
        let resp = self.send(self.request(Method::GET, "metrics")?).await?;
        resp.text().await.map_err(|source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        })
    }

    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.get("api/v1/openapi.json").await
    }

    // ---- auth

    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse> {
        let body = LoginRequest {
            email: email.into(),
            password: password.into(),
        };
        self.with_body(Method::POST, "api/v1/auth/login", &body)
            .await
    }

    pub async fn logout(&self) -> Result<()> {
        self.no_content(self.request(Method::POST, "api/v1/auth/logout")?)
            .await
    }

    pub async fn me(&self) -> Result<Me> {
        self.get("api/v1/me").await
    }

    pub async fn change_password(&self, current: &str, new: &str) -> Result<()> {
        let body = ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.no_content(self.request(Method::PUT, "api/v1/me/password")?.json(&body))
            .await
    }

    // ---- users

    pub async fn list_users(&self) -> Result<Vec<UserView>> {
        self.get("api/v1/users").await
    }

    pub async fn create_user(&self, email: &str, role: &str) -> Result<CreateUserResponse> {
        let body = CreateUserRequest {
            email: email.into(),
            role: role.into(),
        };
        self.with_body(Method::POST, "api/v1/users", &body).await
    }

    pub async fn get_user(&self, user: &str) -> Result<UserView> {
        self.get(&format!("api/v1/users/{}", segment(user))).await
    }

    pub async fn update_user(&self, user: &str, update: &UpdateUserRequest) -> Result<UserView> {
        self.with_body(
            Method::PATCH,
            &format!("api/v1/users/{}", segment(user)),
            update,
        )
        .await
    }

    pub async fn reset_password(&self, user: &str) -> Result<PasswordResetResponse> {
        self.json(self.request(
            Method::POST,
            &format!("api/v1/users/{}/password-reset", segment(user)),
        )?)
        .await
    }

    // ---- roles

    pub async fn list_roles(&self) -> Result<Vec<RoleView>> {
        self.get("api/v1/roles").await
    }

    pub async fn get_role(&self, name: &str) -> Result<RoleView> {
        self.get(&format!("api/v1/roles/{}", segment(name))).await
    }

    pub async fn create_role(&self, req: &CreateRoleRequest) -> Result<RoleView> {
        self.with_body(Method::POST, "api/v1/roles", req).await
    }

    pub async fn delete_role(&self, name: &str) -> Result<()> {
        self.no_content(self.request(Method::DELETE, &format!("api/v1/roles/{}", segment(name)))?)
            .await
    }

    pub async fn permissions(&self) -> Result<Vec<PermissionView>> {
        self.get("api/v1/permissions").await
    }

    // ---- tokens

    pub async fn list_tokens(&self) -> Result<Vec<TokenView>> {
        self.get("api/v1/me/tokens").await
    }

    pub async fn create_token(
        &self,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<CreateTokenResponse> {
        let body = CreateTokenRequest {
            name: name.into(),
            expires_in_seconds: expires_in.map(|d| d.as_secs()),
        };
        self.with_body(Method::POST, "api/v1/me/tokens", &body)
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.no_content(self.request(Method::DELETE, &format!("api/v1/me/tokens/{}", segment(id)))?)
            .await
    }

    // ---- budgets

    pub async fn my_budget(&self) -> Result<BudgetReportView> {
        self.get("api/v1/me/budget").await
    }

    pub async fn user_budget(&self, user: &str) -> Result<BudgetReportView> {
        self.get(&format!("api/v1/users/{}/budget", segment(user)))
            .await
    }

    pub async fn set_budget(&self, user: &str, req: &SetBudgetRequest) -> Result<BudgetView> {
        self.with_body(
            Method::PUT,
            &format!("api/v1/users/{}/budget", segment(user)),
            req,
        )
        .await
    }

    // ---- audit

    pub async fn audit(&self, q: &AuditQuery) -> Result<AuditPageView> {
        self.json(self.request(Method::GET, "api/v1/audit")?.query(q))
            .await
    }

    pub async fn verify_audit(&self) -> Result<AuditVerifyView> {
        self.get("api/v1/audit/verify").await
    }

    // ---- datasets

    pub async fn list_datasets(&self) -> Result<Vec<DatasetView>> {
        self.get("api/v1/datasets").await
    }

    pub async fn get_dataset(&self, name: &str) -> Result<DatasetView> {
        self.get(&format!("api/v1/datasets/{}", segment(name)))
            .await
    }

    /// Uploads a dataset, streaming `file` (of `len` bytes) and calling `progress` with the
    /// bytes sent so far. `format` is `csv` or `parquet`.
    pub async fn upload_dataset<S>(
        &self,
        name: &str,
        manifest: &str,
        format: &str,
        file: S,
        len: u64,
    ) -> Result<DatasetView>
    where
        S: futures_core::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>>
            + Send
            + Sync
            + 'static,
    {
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_string())
            .part(
                "file",
                reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(file), len)
                    .file_name(format!("{name}.{format}")),
            );
        let rb = self
            .request(Method::PUT, &format!("api/v1/datasets/{}", segment(name)))?
            .query(&[("format", format)])
            .multipart(form)
            .timeout(Duration::from_secs(24 * 3600));
        self.json(rb).await
    }

    pub async fn delete_dataset(&self, name: &str) -> Result<()> {
        self.no_content(self.request(
            Method::DELETE,
            &format!("api/v1/datasets/{}", segment(name)),
        )?)
        .await
    }

    pub async fn update_dataset(
        &self,
        name: &str,
        req: &DatasetUpdateRequest,
    ) -> Result<DatasetView> {
        self.with_body(
            Method::PATCH,
            &format!("api/v1/datasets/{}", segment(name)),
            req,
        )
        .await
    }

    pub async fn mock_dataset(&self, name: &str, rows: usize) -> Result<MockView> {
        self.json(
            self.request(
                Method::GET,
                &format!("api/v1/datasets/{}/mock", segment(name)),
            )?
            .query(&[("rows", rows)]),
        )
        .await
    }

    pub async fn query(&self, name: &str, req: &QueryRequest) -> Result<QueryResponse> {
        self.json(
            self.request(
                Method::POST,
                &format!("api/v1/datasets/{}/query", segment(name)),
            )?
            .json(req)
            .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    // ---- signing keys, models, requests

    pub async fn list_keys(&self) -> Result<Vec<SigningKeyView>> {
        self.get("api/v1/me/keys").await
    }

    pub async fn add_key(&self, name: &str, public_key: &str) -> Result<SigningKeyView> {
        let body = AddKeyRequest {
            name: name.into(),
            public_key: public_key.into(),
        };
        self.with_body(Method::POST, "api/v1/me/keys", &body).await
    }

    pub async fn revoke_key(&self, id: i64) -> Result<()> {
        self.no_content(self.request(Method::DELETE, &format!("api/v1/me/keys/{id}"))?)
            .await
    }

    pub async fn list_models(&self) -> Result<Vec<ModelView>> {
        self.get("api/v1/models").await
    }

    pub async fn get_model(&self, name: &str, version: Option<u32>) -> Result<ModelView> {
        let mut rb = self.request(Method::GET, &format!("api/v1/models/{}", segment(name)))?;
        if let Some(v) = version {
            rb = rb.query(&[("version", v)]);
        }
        self.json(rb).await
    }

    pub async fn upload_model(
        &self,
        name: &str,
        onnx: Vec<u8>,
        signature: Option<Vec<u8>>,
    ) -> Result<ModelView> {
        self.upload_model_with(name, onnx, signature, None).await
    }

    /// Uploads a model; with `fhe` (options and calibration CSV), also publishes it for
    /// encrypted inference (the node compiles it, which can take a while).
    pub async fn upload_model_with(
        &self,
        name: &str,
        onnx: Vec<u8>,
        signature: Option<Vec<u8>>,
        fhe: Option<(FhePublishOptions, Vec<u8>)>,
    ) -> Result<ModelView> {
        let mut form = reqwest::multipart::Form::new().part(
            "onnx",
            reqwest::multipart::Part::bytes(onnx).file_name(format!("{name}.onnx")),
        );
        if let Some(sig) = signature {
            form = form.part("signature", reqwest::multipart::Part::bytes(sig));
        }
        if let Some((opts, calibration)) = fhe {
            let opts = serde_json::to_vec(&opts).map_err(|e| ClientError::Protocol {
                status: 0,
                detail: e.to_string(),
            })?;
            form = form
                .part("fhe", reqwest::multipart::Part::bytes(opts))
                .part(
                    "calibration",
                    reqwest::multipart::Part::bytes(calibration).file_name("calibration.csv"),
                );
        }
        self.json(
            self.request(Method::PUT, &format!("api/v1/models/{}", segment(name)))?
                .multipart(form)
                .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    // ---- encrypted inference

    pub async fn fhe_model(&self, name: &str, version: Option<u32>) -> Result<FheModelView> {
        let mut rb = self.request(Method::GET, &format!("api/v1/fhe/models/{}", segment(name)))?;
        if let Some(v) = version {
            rb = rb.query(&[("version", v)]);
        }
        self.json(rb).await
    }

    pub async fn list_evaluation_keys(&self) -> Result<Vec<EvaluationKeyView>> {
        self.get("api/v1/fhe/keys").await
    }

    pub async fn upload_evaluation_key(&self, key: Vec<u8>) -> Result<EvaluationKeyView> {
        self.json(
            self.request(Method::POST, "api/v1/fhe/keys")?
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(key)
                .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    pub async fn delete_evaluation_key(&self, id: &str) -> Result<()> {
        self.no_content(self.request(Method::DELETE, &format!("api/v1/fhe/keys/{}", segment(id)))?)
            .await
    }

    pub async fn fhe_infer(&self, model: &str, body: &FheInferBody) -> Result<FheInferResponse> {
        self.json(
            self.request(
                Method::POST,
                &format!("api/v1/fhe/models/{}/infer", segment(model)),
            )?
            .json(body)
            .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    pub async fn delete_model(&self, name: &str, version: Option<u32>) -> Result<()> {
        let mut rb = self.request(Method::DELETE, &format!("api/v1/models/{}", segment(name)))?;
        if let Some(v) = version {
            rb = rb.query(&[("version", v)]);
        }
        self.no_content(rb).await
    }

    pub async fn validate(&self, model: &str, body: &ValidateRequestBody) -> Result<RequestView> {
        self.json(
            self.request(
                Method::POST,
                &format!("api/v1/models/{}/validate", segment(model)),
            )?
            .json(body)
            .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    pub async fn list_requests(&self, status: Option<&str>) -> Result<Vec<RequestView>> {
        self.list_requests_of_kind(status, None).await
    }

    /// Requests of one kind (`validation` or `query`, the caller's DP queries).
    pub async fn list_requests_of_kind(
        &self,
        status: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<RequestView>> {
        let mut rb = self.request(Method::GET, "api/v1/requests")?;
        if let Some(s) = status {
            rb = rb.query(&[("status", s)]);
        }
        if let Some(k) = kind {
            rb = rb.query(&[("kind", k)]);
        }
        self.json(rb).await
    }

    pub async fn get_request(&self, id: i64) -> Result<RequestView> {
        self.get(&format!("api/v1/requests/{id}")).await
    }

    pub async fn approve_request(&self, id: i64) -> Result<RequestView> {
        self.json(
            self.request(Method::POST, &format!("api/v1/requests/{id}/approve"))?
                .timeout(Duration::from_secs(3600)),
        )
        .await
    }

    pub async fn deny_request(&self, id: i64, reason: &str) -> Result<RequestView> {
        let body = DenyRequestBody {
            reason: reason.into(),
        };
        self.with_body(Method::POST, &format!("api/v1/requests/{id}/deny"), &body)
            .await
    }

    /// A raw request, for tests that need to send what the typed methods would not.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, String)> {
        let mut rb = self.request(method, path)?;
        if let Some((content_type, bytes)) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = rb.send().await.map_err(|source| ClientError::Transport {
            url: self.base.to_string(),
            source,
        })?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}

pub use reqwest::Method as HttpMethod;
