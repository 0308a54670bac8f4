//! The mesh's certificate authority, in the role of istiod's CA: it signs
//! each workload's certificate for its SPIFFE identity
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`), which
//! the control plane serves to the proxy over SDS as istio-agent serves
//! it: the certificate and key as the secret `default`, the root as
//! `ROOTCA`. Proxies use them for mutual TLS between workloads.
//!
//! The root is self-signed (ECDSA P-256), kept in a directory when one is
//! given (`ca-cert.pem`, `ca-key.pem`, as Istio names its self-signed
//! CA's files) so that a restarted control plane keeps the mesh's trust;
//! else it lives in memory. Workload certificates last 24 hours and are
//! signed again once half of that has passed (the control plane pushes
//! every hour, [`RENEW_CHECK`], so this happens in a quiet mesh too);
//! until then every push serves the same one, so pushes do not churn the
//! proxies' TLS.
//!
//! Not yet: proxies are not authenticated when they ask for their
//! identity (istiod checks a Kubernetes service-account token); the
//! control plane trusts the node metadata, which on one machine only the
//! node agent writes.

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How long a workload certificate lasts (istiod's default, 24 h).
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How often the control plane regenerates every proxy's configuration
/// when nothing changes, so that certificates past half their life are
/// signed again well before they expire.
pub const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// A workload's certificate and key, PEM.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub cert: String,
    pub key: String,
    renew_at: SystemTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root: String,
    issued: Mutex<HashMap<String, Issued>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A new self-signed root: its certificate (PEM) and key. The API
/// server's PKI (`crates/apiserver/src/pki.rs`) makes its own CA alike;
/// the mesh does not share that code because it does not depend on the
/// API server: it runs against any Kubernetes API.
fn root() -> Result<(String, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    dn.push(DnType::CommonName, "mast mesh CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2126, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

impl Ca {
    /// A CA whose root lives in memory only.
    pub fn ephemeral() -> Result<Self> {
        let (pem, key) = root()?;
        Self::from_pem(pem, key)
    }

    /// The CA kept in `dir` (`ca-cert.pem`, `ca-key.pem`), made there
    /// first if it is not.
    pub fn load_or_create(dir: &std::path::Path) -> Result<Self> {
        let (cert, key) = (dir.join("ca-cert.pem"), dir.join("ca-key.pem"));
        if !cert.exists() || !key.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the mesh CA's directory {}", dir.display()))?;
            let (pem, k) = root()?;
            let write = |path: &std::path::Path, text: &str, mode: u32| -> Result<()> {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                Ok(())
            };
            write(&key, &k.serialize_pem(), 0o600)
                .with_context(|| format!("writing {}", key.display()))?;
            write(&cert, &pem, 0o644).with_context(|| format!("writing {}", cert.display()))?;
        }
        let pem = std::fs::read_to_string(&cert)
            .with_context(|| format!("reading the mesh CA {}", cert.display()))?;
        let k = KeyPair::from_pem(
            &std::fs::read_to_string(&key)
                .with_context(|| format!("reading the mesh CA's key {}", key.display()))?,
        )
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
        Self::from_pem(pem, k)
    }

    fn from_pem(pem: String, key: KeyPair) -> Result<Self> {
        let issuer = Issuer::from_ca_cert_pem(&pem, key).context("the mesh CA's certificate")?;
        Ok(Self {
            issuer,
            root: pem,
            issued: Mutex::default(),
        })
    }

    /// The root certificate, PEM.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The certificate for a SPIFFE identity: the one issued before while
    /// it is fresh, else a new one.
    pub fn issue(&self, identity: &str) -> Result<Issued> {
        self.issue_at(identity, SystemTime::now())
    }

    fn issue_at(&self, identity: &str, now: SystemTime) -> Result<Issued> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = issued.get(identity).filter(|i| i.renew_at > now) {
            return Ok(i.clone());
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A minute's slack for clocks, as istiod back-dates.
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + LIFETIME).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let i = Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            renew_at: now + LIFETIME / 2,
        };
        issued.insert(identity.to_owned(), i.clone());
        Ok(i)
    }
}

/// A workload's SPIFFE identity.
pub fn identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    let sa = if service_account.is_empty() {
        "default"
    } else {
        service_account
    };
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_certificates_carry_the_identity_and_are_reused_while_fresh() {
        let ca = Ca::ephemeral().expect("ca");
        let id = identity("cluster.local", "default", "");
        assert_eq!(id, "spiffe://cluster.local/ns/default/sa/default");
        let a = ca.issue(&id).expect("issue");
        assert_eq!(ca.issue(&id).expect("again"), a, "fresh: the same one");
        // Past half its life, it is signed again.
        let later = SystemTime::now() + LIFETIME / 2 + Duration::from_secs(60);
        let renewed = ca.issue_at(&id, later).expect("renew");
        assert_ne!(renewed.cert, a.cert);
        assert_eq!(ca.issue_at(&id, later).expect("again"), renewed);
        assert_ne!(
            ca.issue("spiffe://cluster.local/ns/x/sa/y")
                .expect("other")
                .cert,
            a.cert
        );
        let cert = der(&a.cert);
        let (_, x) = x509_parser::parse_x509_certificate(&cert).expect("x509");
        let sans: Vec<String> = x
            .subject_alternative_name()
            .expect("ext")
            .expect("sans")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, [format!("URI({id})")]);
        let root = der(ca.root());
        let (_, root) = x509_parser::parse_x509_certificate(&root).expect("root");
        assert_eq!(x.issuer(), root.subject());
        // Kept in a directory, the root survives a restart.
        let dir = std::env::temp_dir().join(format!("mast-ca-{}", std::process::id()));
        let first = Ca::load_or_create(&dir).expect("create").root().to_owned();
        assert_eq!(Ca::load_or_create(&dir).expect("load").root(), first);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64")
    }
}
