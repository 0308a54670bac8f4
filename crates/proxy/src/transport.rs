//! TLS transport sockets: Envoy's `UpstreamTlsContext` (TLS origination to
//! a cluster's endpoints) and `DownstreamTlsContext` (termination on a
//! filter chain), compiled into rustls configurations, and the streams
//! they give.
//!
//! Envoy's semantics are kept where they differ from a browser's:
//! - an upstream context without a validation context accepts any server
//!   certificate;
//! - a peer's certificate is checked against the SAN matchers only, never
//!   against the SNI;
//! - a client's highest version is TLS 1.2 unless `tls_params` says more,
//!   a server's TLS 1.3;
//! - certificates come inline, from files (read when the configuration is
//!   compiled) or from secrets by name: `static_resources.secrets`, or
//!   SDS over ADS (`sds_config: {ads: {}}`). Until an ADS secret has
//!   arrived, a context that names it is waiting: its handshakes fail,
//!   and the proxy does not call itself ready (as Envoy warms clusters and
//!   listeners until their secrets come).

use crate::bootstrap::{
    CertificateValidationContext, CommonTlsContext, DataSource, DownstreamTlsContext,
    SdsSecretConfig, Secret, TlsCertificate, UpstreamTlsContext,
};
use crate::config::StringMatch;
use anyhow::{anyhow, bail, Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Secrets by name: `static_resources.secrets` and those SDS delivered.
pub type Secrets = HashMap<String, Secret>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS origination: the client configuration and the name to send.
#[derive(Debug)]
pub struct Upstream {
    /// Err: the name of the ADS secret it waits for.
    config: Result<Arc<rustls::ClientConfig>, String>,
    sni: Option<ServerName<'static>>,
}

/// TLS termination for one filter chain.
pub struct Downstream {
    /// Err: the name of the ADS secret it waits for.
    acceptor: Result<tokio_rustls::TlsAcceptor, String>,
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Downstream(TLS)")
    }
}

impl Upstream {
    /// The TLS handshake over a connected socket.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        ep: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        // Without `sni` the endpoint's address stands as the name, which
        // rustls does not send: the ClientHello carries no SNI, as Envoy's.
        let name = self
            .sni
            .clone()
            .unwrap_or(ServerName::IpAddress(ep.ip().into()));
        let config = self.config.as_ref().map_err(|s| waiting(s))?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
    }
}

impl Downstream {
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = self.acceptor.as_ref().map_err(|s| waiting(s))?;
        acceptor.accept(tcp).await
    }
}

fn waiting(secret: &str) -> io::Error {
    io::Error::other(format!("secret {secret:?} has not arrived over SDS"))
}

/// The first secret the context takes over ADS that has not arrived.
fn missing(c: &CommonTlsContext, secrets: &Secrets) -> Option<String> {
    c.secret_refs()
        .find(|s| s.sds_config.is_some() && !secrets.contains_key(&s.name))
        .map(|s| s.name.clone())
}

/// Whether a failed handshake refused the peer's certificate: `Some(true)`
/// for its names, `Some(false)` for its chain, `None` for anything else.
pub fn refused_certificate(e: &io::Error) -> Option<bool> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName) => Some(true),
        rustls::Error::InvalidCertificate(_) => Some(false),
        _ => None,
    }
}

/// A [`DataSource`]'s bytes.
pub(crate) fn data(d: &DataSource, what: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    match (&d.filename, &d.inline_string, &d.inline_bytes) {
        (Some(f), None, None) => std::fs::read(f).with_context(|| format!("{what}: reading {f}")),
        (None, Some(s), None) => Ok(s.as_bytes().to_vec()),
        (None, None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .with_context(|| format!("{what}: inline_bytes is not base64")),
        _ => bail!("{what}: a data source needs one of filename, inline_string or inline_bytes"),
    }
}

fn certs(d: &DataSource, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = data(d, what)?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: not PEM"))?;
    if certs.is_empty() {
        bail!("{what}: no PEM certificate in it");
    }
    Ok(certs)
}

fn key(d: &DataSource) -> Result<PrivateKeyDer<'static>> {
    let pem = data(d, "private_key")?;
    rustls_pemfile::private_key(&mut &pem[..])
        .context("private_key: not PEM")?
        .ok_or_else(|| anyhow!("private_key: no PEM private key in it"))
}

fn secret<'a>(s: &SdsSecretConfig, secrets: &'a Secrets) -> Result<&'a Secret> {
    secrets
        .get(&s.name)
        .ok_or_else(|| anyhow!("secret {:?} is not in static_resources.secrets", s.name))
}

/// The context's certificate, if it has one.
fn certificate(
    c: &CommonTlsContext,
    secrets: &Secrets,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let mut all: Vec<&TlsCertificate> = c.tls_certificates.iter().collect();
    for s in &c.tls_certificate_sds_secret_configs {
        let found = secret(s, secrets)?;
        all.push(
            found
                .tls_certificate
                .as_ref()
                .ok_or_else(|| anyhow!("secret {:?} holds no tls_certificate", s.name))?,
        );
    }
    match all.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((
            certs(&one.certificate_chain, "certificate_chain")?,
            key(&one.private_key)?,
        ))),
        _ => bail!("more than one certificate per context is not implemented"),
    }
}

/// How a peer's certificate is checked.
#[derive(Debug)]
struct Validation {
    /// None: any chain is accepted (no `trusted_ca`, or ACCEPT_UNTRUSTED).
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<(San, StringMatch)>,
}

/// Which subject alternative names a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
enum San {
    Any,
    Dns,
    Uri,
    Email,
    Ip,
}

/// The context's validation, merged as Envoy merges a combined one: the
/// secret's trusted CA and verification mode over the default's, and the
/// SAN matchers of both.
fn validation(c: &CommonTlsContext, secrets: &Secrets) -> Result<Option<Validation>> {
    let mut parts: Vec<&CertificateValidationContext> = vec![];
    if let Some(v) = &c.validation_context {
        parts.push(v);
    }
    let from_secret = |s: &SdsSecretConfig| -> Result<&CertificateValidationContext> {
        secret(s, secrets)?
            .validation_context
            .as_ref()
            .ok_or_else(|| anyhow!("secret {:?} holds no validation_context", s.name))
    };
    if let Some(s) = &c.validation_context_sds_secret_config {
        parts.push(from_secret(s)?);
    }
    if let Some(comb) = &c.combined_validation_context {
        parts.push(&comb.default_validation_context);
        parts.push(from_secret(&comb.validation_context_sds_secret_config)?);
    }
    if parts.len() > 2 || (parts.len() == 2 && c.combined_validation_context.is_none()) {
        bail!("give one of validation_context, validation_context_sds_secret_config and combined_validation_context");
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let (mut ca, mut accept_untrusted, mut sans) = (None, false, vec![]);
    for v in parts {
        if v.trusted_ca.is_some() {
            ca = v.trusted_ca.as_ref();
        }
        match v.trust_chain_verification.as_deref() {
            None => {}
            Some("VERIFY_TRUST_CHAIN") => accept_untrusted = false,
            Some("ACCEPT_UNTRUSTED") => accept_untrusted = true,
            Some(other) => {
                bail!("trust_chain_verification {other}: VERIFY_TRUST_CHAIN or ACCEPT_UNTRUSTED")
            }
        }
        for m in &v.match_subject_alt_names {
            sans.push((San::Any, crate::config::string_match(m)?));
        }
        for m in &v.match_typed_subject_alt_names {
            let t = match m.san_type.as_str() {
                "DNS" => San::Dns,
                "URI" => San::Uri,
                "EMAIL" => San::Email,
                "IP_ADDRESS" => San::Ip,
                other => bail!("san_type {other} is not implemented (DNS, URI, EMAIL, IP_ADDRESS)"),
            };
            sans.push((t, crate::config::string_match(&m.matcher)?));
        }
    }
    let roots = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "trusted_ca")? {
                roots.add(c).context("trusted_ca")?;
            }
            Some(Arc::new(roots))
        }
        None if !sans.is_empty() && !accept_untrusted => {
            // As Envoy: a name proves nothing without a chain to a CA.
            bail!("SAN-based verification of peer certificates without trusted_ca is insecure and not allowed")
        }
        None => None,
    };
    Ok(Some(Validation {
        roots: roots.filter(|_| !accept_untrusted),
        sans,
    }))
}

/// A certificate's first URI SAN: the peer's identity in a mesh
/// (Istio's SPIFFE principal).
pub fn uri_san(der: &CertificateDer<'_>) -> Option<String> {
    names_of(der)
        .into_iter()
        .find(|(kind, _)| *kind == San::Uri)
        .map(|(_, name)| name)
}

/// The subject alternative names of a certificate, by kind, as text.
fn names_of(der: &CertificateDer<'_>) -> Vec<(San, String)> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return vec![];
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) => Some((San::Dns, (*s).to_owned())),
            GeneralName::URI(s) => Some((San::Uri, (*s).to_owned())),
            GeneralName::RFC822Name(s) => Some((San::Email, (*s).to_owned())),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?),
                    _ => return None,
                };
                Some((San::Ip, ip.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// A wildcard DNS SAN (`*.example.com`) against an exact matcher: it
/// covers one label in front of its suffix, as Envoy's `dnsNameMatch`.
fn wildcard_match(m: &StringMatch, san: &str) -> bool {
    let (StringMatch::Exact(want), Some(suffix)) = (m, san.strip_prefix("*.")) else {
        return false;
    };
    matches!(want.split_once('.'), Some((label, rest)) if !label.is_empty() && rest.eq_ignore_ascii_case(suffix))
}

impl Validation {
    fn check_names(&self, der: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.sans.is_empty() {
            return Ok(());
        }
        let names = names_of(der);
        let ok = self.sans.iter().any(|(want, m)| {
            names.iter().any(|(t, v)| {
                (*want == San::Any || want == t)
                    && (crate::http::string_match(m, Some(v))
                        || (*t == San::Dns && wildcard_match(m, v)))
            })
        });
        if ok {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }
}

/// An upstream server's certificate, checked as Envoy checks it.
#[derive(Debug)]
struct ServerCheck {
    v: Option<Validation>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.v {
            if let Some(roots) = &v.roots {
                let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    roots,
                    intermediates,
                    now,
                    self.algs.all,
                )?;
            }
            v.check_names(end_entity)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A downstream client's certificate: rustls's chain check, then the SAN
/// matchers.
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    v: Validation,
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.v.check_names(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS versions between `tls_params`' bounds; `max` is the side's
/// default highest version.
fn versions(
    c: &CommonTlsContext,
    max: &'static rustls::SupportedProtocolVersion,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>> {
    let all = [&rustls::version::TLS12, &rustls::version::TLS13];
    let index = |v: &Option<String>, default: usize| -> Result<usize> {
        match v.as_deref() {
            None | Some("TLS_AUTO") => Ok(default),
            Some("TLSv1_2") => Ok(0),
            Some("TLSv1_3") => Ok(1),
            Some(other) => bail!("TLS version {other} is not implemented (TLSv1_2, TLSv1_3)"),
        }
    };
    let p = c.tls_params.clone().unwrap_or_default();
    let lo = index(&p.tls_minimum_protocol_version, 0)?;
    let default_hi = if max == &rustls::version::TLS13 { 1 } else { 0 };
    let hi = index(&p.tls_maximum_protocol_version, default_hi)?;
    if lo > hi {
        bail!("tls_minimum_protocol_version is above tls_maximum_protocol_version");
    }
    Ok(all[lo..=hi].to_vec())
}

fn alpn(c: &CommonTlsContext) -> Vec<Vec<u8>> {
    c.alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

/// Compile an `UpstreamTlsContext`.
pub fn upstream(ctx: &UpstreamTlsContext, secrets: &Secrets) -> Result<Upstream> {
    let c = &ctx.common_tls_context;
    let sni = match ctx.sni.as_str() {
        "" => None,
        s => Some(
            ServerName::try_from(s.to_owned())
                .map_err(|_| anyhow!("sni {s:?} is not a DNS name"))?,
        ),
    };
    if let Some(name) = missing(c, secrets) {
        return Ok(Upstream {
            config: Err(name),
            sni,
        });
    }
    let provider = provider();
    let check = ServerCheck {
        v: validation(c, secrets)?,
        algs: provider.signature_verification_algorithms,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(c, &rustls::version::TLS12)?)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check));
    let mut config = match certificate(c, secrets)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .context("the certificate and its private key")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn(c);
    Ok(Upstream {
        config: Ok(Arc::new(config)),
        sni,
    })
}

/// Compile a `DownstreamTlsContext`.
pub fn downstream(ctx: &DownstreamTlsContext, secrets: &Secrets) -> Result<Downstream> {
    let c = &ctx.common_tls_context;
    if let Some(name) = missing(c, secrets) {
        return Ok(Downstream {
            acceptor: Err(name),
        });
    }
    let provider = provider();
    let Some((chain, key)) = certificate(c, secrets)? else {
        bail!("a DownstreamTlsContext needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)");
    };
    let required = ctx.require_client_certificate.unwrap_or(false);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(c, &rustls::version::TLS13)?)?;
    let builder = match validation(c, secrets)? {
        Some(v) => {
            let Some(roots) = v.roots.clone() else {
                bail!("a DownstreamTlsContext's validation context needs trusted_ca");
            };
            let b = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
            let b = if required {
                b
            } else {
                b.allow_unauthenticated()
            };
            let inner = b.build().context("the client certificates' verifier")?;
            builder.with_client_cert_verifier(Arc::new(ClientCheck { inner, v }))
        }
        None if required => {
            bail!("require_client_certificate needs a validation context with trusted_ca")
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the certificate and its private key")?;
    config.alpn_protocols = alpn(c);
    Ok(Downstream {
        acceptor: Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    })
}

/// An upstream connection: plain TCP (left), or TLS over it (right).
pub type UpIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// A downstream connection: plain TCP (left), or TLS with the bytes read
/// to sniff its protocol put back (right). One type for both, so that
/// hyper's and h2's connection code is compiled once (generic over two
/// stream types, it was compiled twice and inlined less: 1–2% more
/// instructions per request).
pub type DownIo = Either<TcpStream, Box<Rewind<tokio_rustls::server::TlsStream<TcpStream>>>>;

/// A stream with bytes already read from it put back in front: a TLS
/// connection's first bytes, read to tell HTTP/2's preface from HTTP/1.1
/// when ALPN did not say (Envoy's codec AUTO sniffs the same way).
///
/// Written by hand: hyper-util has one (`common::rewind`), but private.
pub struct Rewind<S> {
    head: bytes::Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(head: bytes::Bytes, inner: S) -> Self {
        Rewind { head, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.head.is_empty() {
            let n = me.head.len().min(buf.remaining());
            buf.put_slice(&me.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{TlsParameters, TransportSocket};

    /// A CA and a certificate it signs for `echo.test`, PEM.
    fn pki() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["echo.test".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    fn inline(s: &str) -> DataSource {
        DataSource {
            filename: None,
            inline_string: Some(s.to_owned()),
            inline_bytes: None,
        }
    }

    fn read<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.expect_err("refused"))
    }

    #[tokio::test]
    async fn a_handshake_checks_the_chain_and_the_names_not_the_sni() {
        let (ca, cert, key) = pki();
        let mut server = DownstreamTlsContext::default();
        server
            .common_tls_context
            .tls_certificates
            .push(TlsCertificate {
                certificate_chain: inline(&cert),
                private_key: inline(&key),
            });
        let server = downstream(&server, &Secrets::new()).expect("server");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = server.accept(s).await;
            }
        });
        let client = |sni: &str, san: Option<&str>, trusted: bool| {
            let mut u = UpstreamTlsContext {
                sni: sni.to_owned(),
                ..Default::default()
            };
            if trusted || san.is_some() {
                u.common_tls_context.validation_context = Some(CertificateValidationContext {
                    trusted_ca: Some(inline(&ca)),
                    match_subject_alt_names: san
                        .map(|s| read(&format!("[{{exact: {s}}}]")))
                        .unwrap_or_default(),
                    match_typed_subject_alt_names: vec![],
                    trust_chain_verification: None,
                });
            }
            upstream(&u, &Secrets::new()).expect("client")
        };
        let shake = |c: Upstream| async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            c.handshake(tcp, addr)
                .await
                .map(|_| ())
                .map_err(|e| refused_certificate(&e))
        };
        // No validation context: anything goes, as in Envoy.
        assert_eq!(shake(client("", None, false)).await, Ok(()));
        // The SNI is not checked against the certificate.
        assert_eq!(shake(client("other.test", None, true)).await, Ok(()));
        assert_eq!(shake(client("", Some("echo.test"), true)).await, Ok(()));
        assert_eq!(
            shake(client("echo.test", Some("other.test"), true)).await,
            Err(Some(true))
        );
        // Another CA's roots refuse the chain.
        let (other_ca, _, _) = pki();
        let mut u = UpstreamTlsContext::default();
        u.common_tls_context.validation_context = Some(CertificateValidationContext {
            trusted_ca: Some(inline(&other_ca)),
            match_subject_alt_names: vec![],
            match_typed_subject_alt_names: vec![],
            trust_chain_verification: None,
        });
        let c = upstream(&u, &Secrets::new()).expect("client");
        assert_eq!(shake(c).await, Err(Some(false)));
    }

    #[test]
    fn a_wildcard_dns_name_covers_one_label() {
        let m = StringMatch::Exact("api.example.com".into());
        assert!(wildcard_match(&m, "*.example.com"));
        assert!(!wildcard_match(&m, "*.com"));
        assert!(!wildcard_match(
            &StringMatch::Exact("a.b.example.com".into()),
            "*.example.com"
        ));
        assert!(!wildcard_match(
            &StringMatch::Prefix("api".into()),
            "*.example.com"
        ));
    }

    #[test]
    fn contexts_that_cannot_work_are_refused_by_name() {
        let (ca, cert, key) = pki();
        let none = Secrets::new();
        let up = |yaml: &str| -> UpstreamTlsContext { read(yaml) };
        assert!(err(upstream(
            &up(
                "common_tls_context: {validation_context: {match_subject_alt_names: [{exact: a}]}}"
            ),
            &none
        ))
        .contains("without trusted_ca is insecure"));
        // An ADS secret that has not come: the context waits for it.
        let sds = up("common_tls_context: {tls_certificate_sds_secret_configs: [{name: default, sds_config: {ads: {}}}]}");
        assert_eq!(
            upstream(&sds, &none)
                .expect("waiting")
                .config
                .err()
                .as_deref(),
            Some("default")
        );
        // Istio's SDS over its own cluster is not implemented.
        assert!(serde_yaml_ng::from_str::<UpstreamTlsContext>(
            "common_tls_context: {tls_certificate_sds_secret_configs: [{name: default, sds_config: {api_config_source: {api_type: GRPC}}}]}"
        )
        .expect_err("refused")
        .to_string()
        .contains("api_config_source"));
        assert!(err(upstream(
            &up("common_tls_context: {validation_context_sds_secret_config: {name: roots}}"),
            &none
        ))
        .contains("\"roots\" is not in static_resources.secrets"));
        let mut ctx = up("{}");
        ctx.common_tls_context.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: Some("TLSv1_1".into()),
            tls_maximum_protocol_version: None,
        });
        assert!(err(upstream(&ctx, &none)).contains("TLSv1_1 is not implemented"));
        ctx.common_tls_context.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: Some("TLSv1_3".into()),
            tls_maximum_protocol_version: Some("TLSv1_2".into()),
        });
        assert!(err(upstream(&ctx, &none)).contains("above tls_maximum_protocol_version"));
        assert!(err(downstream(&read("{}"), &none)).contains("needs a certificate"));
        let mut d: DownstreamTlsContext = read("require_client_certificate: true");
        d.common_tls_context.tls_certificates.push(TlsCertificate {
            certificate_chain: inline(&cert),
            private_key: inline(&key),
        });
        assert!(err(downstream(&d, &none)).contains("needs a validation context"));
        d.common_tls_context.validation_context = Some(CertificateValidationContext {
            trusted_ca: Some(inline(&ca)),
            match_subject_alt_names: vec![],
            match_typed_subject_alt_names: vec![],
            trust_chain_verification: None,
        });
        assert!(downstream(&d, &none).is_ok());
        d.common_tls_context.tls_certificates[0].private_key = inline("not a key");
        assert!(err(downstream(&d, &none)).contains("no PEM private key"));
        // A file that is not there is named.
        d.common_tls_context.tls_certificates[0].private_key = DataSource {
            filename: Some("/nonexistent/key.pem".into()),
            inline_string: None,
            inline_bytes: None,
        };
        assert!(err(downstream(&d, &none)).contains("reading /nonexistent/key.pem"));
        // An unknown field of a context is refused by the bootstrap's types.
        let e = serde_yaml_ng::from_str::<TransportSocket>(
            "{name: tls, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, max_session_keys: 2}}",
        )
        .expect_err("refused");
        assert!(e.to_string().contains("max_session_keys"), "{e}");
    }
}
