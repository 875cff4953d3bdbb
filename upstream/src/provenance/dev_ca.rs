//! The development Content Credentials CA (for `dev-init`, tests and
//! `make run`, never production): `dev-init` makes, once, a root
//! at `{state_dir}/provenance/ca.pem` and a signing certificate it issued,
//! with the extensions C2PA validators require (an EC P-256 leaf, not
//! self-signed: `digitalSignature` critical, `emailProtection`, `CA:false`,
//! subject and authority key identifiers; the root `CA:true` with
//! `keyCertSign`). Validators trust the images with `ca.pem` as anchor.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// The files of the development CA and signing key.
#[derive(Debug, Clone)]
pub struct DevCa {
    /// The root (the validators' trust anchor).
    pub root: PathBuf,
    root_key: PathBuf,
    /// Signing chain (leaf, then root) and the leaf's key: the settings' defaults.
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl DevCa {
    pub fn at(state_dir: &Path) -> Self {
        let dir = state_dir.join("provenance");
        Self {
            root: dir.join("ca.pem"),
            root_key: dir.join("ca.key"),
            chain: dir.join("signer.pem"),
            key: dir.join("signer.key"),
        }
    }
}

/// Creates the CA and a signing certificate under `state_dir`, unless they exist.
pub fn init(state_dir: &Path) -> anyhow::Result<DevCa> {
    let files = DevCa::at(state_dir);
    let dir = state_dir.join("provenance");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !files.root.exists() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let root = root_params().self_signed(&key)?;
        write_secret(&files.root_key, &key.serialize_pem())?;
        std::fs::write(&files.root, root.pem()).with_context(|| format!("writing {}", files.root.display()))?;
    }
    if !files.chain.exists() || !files.key.exists() {
        let (chain, key) = issue(&files, "mcp-image-gateway development signer")?;
        std::fs::remove_file(&files.key).ok();
        write_secret(&files.key, &key)?;
        std::fs::write(&files.chain, chain).with_context(|| format!("writing {}", files.chain.display()))?;
    }
    Ok(files)
}

/// A new signing certificate from the development CA: the chain PEM (leaf,
/// then root) and the leaf's PKCS#8 key PEM. Rotations in tests use it.
pub fn issue(files: &DevCa, common_name: &str) -> anyhow::Result<(String, String)> {
    let root_key = KeyPair::from_pem(
        &std::fs::read_to_string(&files.root_key).with_context(|| format!("reading {}", files.root_key.display()))?,
    )?;
    let root_pem = std::fs::read_to_string(&files.root).with_context(|| format!("reading {}", files.root.display()))?;
    let issuer = Issuer::new(root_params(), root_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, 2);
    let leaf = params.signed_by(&key, &issuer)?;
    Ok((format!("{}{}", leaf.pem(), root_pem), key.serialize_pem()))
}

/// The root's parameters: the same every time, so a reloaded key re-creates its issuer name.
fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("mcp-image-gateway development root");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, 10);
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "MCP Image Gateway (development)");
    name.push(DnType::CommonName, common_name);
    name
}

/// From yesterday (clock skew) for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let start = chrono::Utc::now() - chrono::Duration::days(1);
    let at = |year: i32| rcgen::date_time_ymd(year, start.month() as u8, start.day().min(28) as u8);
    params.not_before = at(start.year());
    params.not_after = at(start.year() + years);
}

/// Writes a new private key file readable by its owner only (the dev kit's
/// other secrets too).
pub fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
