//! The cluster's certificates: a CA made on first start, the API server's
//! serving certificate, an admin client certificate, an admin bearer token,
//! and the kubeconfig that ties them together. All live under
//! `<data-dir>/pki`, so a restart on the same data dir resumes the cluster
//! with the same identity.

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Why the certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}; check the data dir's permissions")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a valid PEM file: remove the data dir's pki/ folder to regenerate it")]
    Pem { path: PathBuf },
}

/// The certificates and token of a cluster, loaded or freshly made.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub admin_token: String,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, data: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    let _ = secret;
    std::fs::rename(&tmp, path).map_err(io)
}

fn random_token() -> String {
    use rand::Rng;
    // Hex: a token must never start with '-', or command lines such as
    // `mast agent --token <T>` would read it as a flag.
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Pki {
    /// Load the PKI from `<data_dir>/pki`, creating whatever is missing.
    /// `hosts` are extra names and addresses for the serving certificate.
    pub fn load_or_create(data_dir: &Path, hosts: &[String]) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let ca_cert = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        if !ca_cert.exists() || !ca_key.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "mast-ca");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_after = rcgen::date_time_ymd(2126, 1, 1);
            let cert = params.self_signed(&key)?;
            write(&ca_key, &key.serialize_pem(), true)?;
            write(&ca_cert, &cert.pem(), false)?;
        }
        let ca_pem = read(&ca_cert)?;
        let ca_key_pem = read(&ca_key)?;
        let ca_keypair = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::Pem {
            path: ca_key.clone(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_keypair).map_err(|_| PkiError::Pem {
            path: ca_cert.clone(),
        })?;

        let mut names: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "127.0.0.1",
            "::1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(hosts.iter().cloned());
        names.sort();
        names.dedup();
        // The serving certificate is remade when the requested names change.
        let server_cert = dir.join("server.crt");
        let server_key = dir.join("server.key");
        let names_file = dir.join("server.names");
        let wanted = names.join("\n");
        if !server_cert.exists()
            || !server_key.exists()
            || std::fs::read_to_string(&names_file).ok().as_deref() != Some(wanted.as_str())
        {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.subject_alt_names = names
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => n.clone().try_into().map(SanType::DnsName),
                })
                .collect::<Result<_, _>>()?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "kube-apiserver");
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.not_after = rcgen::date_time_ymd(2126, 1, 1);
            let cert = params.signed_by(&key, &issuer)?;
            write(&server_key, &key.serialize_pem(), true)?;
            write(&server_cert, &cert.pem(), false)?;
            write(&names_file, &wanted, false)?;
        }

        let admin_cert = dir.join("admin.crt");
        let admin_key = dir.join("admin.key");
        if !admin_cert.exists() || !admin_key.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "admin");
            dn.push(DnType::OrganizationName, "system:masters");
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.not_after = rcgen::date_time_ymd(2126, 1, 1);
            let cert = params.signed_by(&key, &issuer)?;
            write(&admin_key, &key.serialize_pem(), true)?;
            write(&admin_cert, &cert.pem(), false)?;
        }

        let token_file = dir.join("admin.token");
        if !token_file.exists() {
            write(&token_file, &random_token(), true)?;
        }
        Ok(Self {
            ca_pem,
            server_cert_pem: read(&server_cert)?,
            server_key_pem: read(&server_key)?,
            admin_cert_pem: read(&admin_cert)?,
            admin_key_pem: read(&admin_key)?,
            admin_token: read(&token_file)?.trim().to_owned(),
            dir,
        })
    }

    /// A kubeconfig for the admin user at `server` (e.g. `https://127.0.0.1:6443`).
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: mast
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: mast
  context:
    cluster: mast
    user: admin
    namespace: default
current-context: mast
preferences: {{}}
",
            ca = b64(&self.ca_pem),
            cert = b64(&self.admin_cert_pem),
            key = b64(&self.admin_key_pem),
        )
    }

    /// Write the kubeconfig to `<data_dir>/kubeconfig.yaml` and return its path.
    pub fn write_kubeconfig(&self, data_dir: &Path, server: &str) -> Result<PathBuf, PkiError> {
        let path = data_dir.join("kubeconfig.yaml");
        write(&path, &self.kubeconfig(server), true)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &[]).unwrap();
        let b = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        let c = Pki::load_or_create(dir.path(), &["10.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
        assert!(a
            .kubeconfig("https://127.0.0.1:6443")
            .contains("certificate-authority-data"));
    }
}
