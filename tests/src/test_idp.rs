//! A real OpenID provider for the sign-in tests: npm `oidc-provider`
//! (`tests/clients/test_idp.mjs`) in one of its profiles, on a free loopback
//! port, with signing keys the test also holds (to mint what this IdP would:
//! identity assertion grants). Stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use jwt_simple::prelude::*;

use crate::stack::{free_port, workspace_root};

/// How the IdP behaves (see `test_idp.mjs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Dynamic registration, resource indicators, JWT access tokens with `org`.
    Keycloak,
    /// No registration; a confidential client for the gateway.
    Confidential,
    /// No registration, OpenID discovery only, `resource` refused, `tid`/`scp`.
    Entra,
}

pub struct TestIdp {
    pub issuer: String,
    pub port: u16,
    /// The IdP's signing key (ES256, `kid` "idp-1").
    pub key: ES256KeyPair,
    pub client_id: String,
    pub client_secret: String,
    child: Child,
    dir: std::path::PathBuf,
}

impl TestIdp {
    /// The issuer a test IdP on `port` will have (pick the port first when
    /// the gateway must know the issuer before the IdP knows the gateway).
    pub fn issuer_at(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Starts the IdP on `port`; `gateway_callback` is the redirect URI of
    /// the gateway's confidential client (profiles without registration).
    pub fn start(profile: Profile, port: u16, gateway_callback: &str) -> TestIdp {
        let dir = std::env::temp_dir().join(format!("test-idp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = ES256KeyPair::generate().with_key_id("idp-1");
        let mut jwk: serde_json::Value = serde_json::from_str(&key.to_jwk()).unwrap();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, serde_json::json!({"keys": [jwk]}).to_string()).unwrap();
        let name = match profile {
            Profile::Keycloak => "keycloak",
            Profile::Confidential => "confidential",
            Profile::Entra => "entra",
        };
        let log = std::fs::File::create(dir.join("idp.log")).unwrap();
        let child = Command::new("node")
            .arg(workspace_root().join("tests/clients/test_idp.mjs"))
            .env("IDP_PORT", port.to_string())
            .env("IDP_PROFILE", name)
            .env("IDP_JWKS_FILE", &jwks_file)
            .env("IDP_GATEWAY_CALLBACK", gateway_callback)
            .env("IDP_GATEWAY_CLIENT_ID", "mcp-gateway")
            .env("IDP_GATEWAY_CLIENT_SECRET", "gateway-secret")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("node (run `make test-clients`)");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test IdP did not start: {}",
                std::fs::read_to_string(dir.join("idp.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        TestIdp {
            issuer: Self::issuer_at(port),
            port,
            key,
            client_id: "mcp-gateway".into(),
            client_secret: "gateway-secret".into(),
            child,
            dir,
        }
    }

    /// Starts the IdP on a free port (profiles whose clients register).
    pub fn start_free(profile: Profile) -> TestIdp {
        Self::start(profile, free_port(), "http://127.0.0.1:1/unused")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("idp.log")).unwrap_or_default()
    }

    /// An identity assertion grant (ID-JAG) as this IdP would mint it by
    /// token exchange: for `audience` (the MCP authorization server), the
    /// client and the resource; `edit` changes the claims before signing.
    pub fn id_jag(
        &self,
        audience: &str,
        client_id: &str,
        resource: &str,
        edit: impl FnOnce(&mut JWTClaims<serde_json::Value>),
    ) -> String {
        let mut claims = Claims::with_custom_claims(
            serde_json::json!({"client_id": client_id, "resource": resource, "org": "acme", "scope": "images:generate"}),
            Duration::from_secs(300),
        )
        .with_issuer(&self.issuer)
        .with_audience(audience)
        .with_subject("carol")
        .with_jwt_id(uuid::Uuid::new_v4().to_string());
        edit(&mut claims);
        let options = HeaderOptions {
            signature_type: Some("oauth-id-jag+jwt".into()),
            ..Default::default()
        };
        self.key.sign_with_options(claims, &options).unwrap()
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
