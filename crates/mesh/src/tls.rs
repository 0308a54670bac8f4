//! TLS in the mesh's configuration, as istiod builds it.
//!
//! - **HTTPS at ingress gateways**: Gateway servers with `tls.mode`
//!   SIMPLE, MUTUAL or OPTIONAL_MUTUAL become one listener per port with a
//!   filter chain per server (by SNI, the server's hosts), terminating TLS
//!   with the server's certificate.
//! - **TLS origination**: a DestinationRule's `tls` (SIMPLE or MUTUAL)
//!   becomes its clusters' `UpstreamTlsContext`.
//!
//! Certificates come from Kubernetes Secrets (`credentialName`, in the
//! proxy's namespace) over SDS on the ADS stream, as `kubernetes://<name>`
//! and, for a CA, `kubernetes://<name>-cacert`; or from files in the
//! proxy's filesystem.

use crate::envoy::{any, hcm_filter, rds};
use crate::model::Mesh;
use envoy_types::pb::envoy::config::cluster::v3 as cluster_v3;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use mast_api::istio::types::{Server, ServerTlsSettings};
use std::collections::BTreeMap;

/// Whether a server terminates TLS at the gateway (HTTPS or TLS with
/// SIMPLE, MUTUAL or OPTIONAL_MUTUAL), and how. ISTIO_MUTUAL is not
/// implemented yet.
pub fn terminates(s: &Server) -> Option<&ServerTlsSettings> {
    let proto = s.port.protocol_upper();
    let t = s.tls.as_ref()?;
    let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
    (matches!(proto.as_str(), "HTTPS" | "TLS")
        && matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL"))
    .then_some(t)
}

/// The SDS name of a credential's certificate, and of its CA.
fn sds_names(credential: &str) -> (String, String) {
    (
        format!("kubernetes://{credential}"),
        format!("kubernetes://{credential}-cacert"),
    )
}

fn sds(name: String) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name,
        sds_config: Some(crate::envoy::ads()),
    }
}

fn file(path: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

fn bytes(b: &[u8]) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(b.to_vec())),
        ..Default::default()
    }
}

/// Istio's TLS version names (`TLSV1_2`) as Envoy's.
fn version(v: &Option<String>) -> i32 {
    use tls::tls_parameters::TlsProtocol;
    (match v.as_deref() {
        Some("TLSV1_0") => TlsProtocol::TlSv10,
        Some("TLSV1_1") => TlsProtocol::TlSv11,
        Some("TLSV1_2") => TlsProtocol::TlSv12,
        Some("TLSV1_3") => TlsProtocol::TlSv13,
        _ => TlsProtocol::TlsAuto,
    }) as i32
}

/// A context's own certificate: the credential's (over SDS), else the
/// files (certificate, key).
fn certificate(
    common: &mut tls::CommonTlsContext,
    credential: Option<&str>,
    files: (Option<&str>, Option<&str>),
) {
    match credential {
        Some(c) => common
            .tls_certificate_sds_secret_configs
            .push(sds(sds_names(c).0)),
        None => common.tls_certificates.push(tls::TlsCertificate {
            certificate_chain: files.0.map(file),
            private_key: files.1.map(file),
            ..Default::default()
        }),
    }
}

/// How a peer's certificate is checked: its SANs, and the CA of the
/// credential (over SDS) or of a file.
fn validation(
    sans: Vec<String>,
    credential: Option<&str>,
    ca: Option<&str>,
) -> tls::common_tls_context::ValidationContextType {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    #[allow(deprecated)] // Istio sets the same field.
    let mut v = tls::CertificateValidationContext {
        match_subject_alt_names: sans
            .into_iter()
            .map(|s| matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    match credential {
        Some(c) => {
            ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                default_validation_context: Some(v),
                validation_context_sds_secret_config: Some(sds(sds_names(c).1)),
                ..Default::default()
            })
        }
        None => {
            v.trusted_ca = ca.map(file);
            ValidationContextType::ValidationContext(v)
        }
    }
}

/// The server's `DownstreamTlsContext`.
pub(crate) fn context(t: &ServerTlsSettings) -> tls::DownstreamTlsContext {
    let mode = t.mode.as_deref().unwrap_or_default();
    let credential = t.credential_name.as_deref().filter(|c| !c.is_empty());
    let mut common = tls::CommonTlsContext {
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    if t.min_protocol_version.is_some() || t.max_protocol_version.is_some() {
        common.tls_params = Some(tls::TlsParameters {
            tls_minimum_protocol_version: version(&t.min_protocol_version),
            tls_maximum_protocol_version: version(&t.max_protocol_version),
            ..Default::default()
        });
    }
    certificate(
        &mut common,
        credential,
        (t.server_certificate.as_deref(), t.private_key.as_deref()),
    );
    let mutual = mode != "SIMPLE";
    if mutual {
        common.validation_context_type = Some(validation(
            t.subject_alt_names.clone(),
            credential,
            t.ca_certificates.as_deref(),
        ));
    }
    tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: mode == "MUTUAL",
        }),
        ..Default::default()
    }
}

/// The SNI names a server's hosts match (`ns/host` is `host`); none for
/// `*`, which takes any.
pub(crate) fn server_names(s: &Server) -> Vec<String> {
    let hosts: Vec<&str> = s
        .hosts
        .iter()
        .map(|h| h.rsplit_once('/').map(|(_, h)| h).unwrap_or(h))
        .collect();
    if hosts.contains(&"*") {
        return vec![];
    }
    hosts.into_iter().map(str::to_owned).collect()
}

/// The listener `0.0.0.0_<port>` for these TLS-terminating servers, routed
/// by RDS `route_name`.
pub fn https_listener(port: u16, route_name: &str, servers: &[&Server]) -> listener::Listener {
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    let mut l = crate::envoy::http_listener(port, route_name);
    let Some(template) = l.filter_chains.pop() else {
        return l;
    };
    for s in servers {
        let Some(t) = terminates(s) else {
            continue;
        };
        let mut chain = template.clone();
        chain.filters = vec![hcm_filter(
            &format!("outbound_0.0.0.0_{port}"),
            rds(route_name),
        )];
        chain.filter_chain_match = Some(listener::FilterChainMatch {
            server_names: server_names(s),
            ..Default::default()
        });
        chain.transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
                &context(t),
            ))),
        });
        l.filter_chains.push(chain);
    }
    l.listener_filters = vec![listener::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }];
    l
}

/// The credentials these servers name (`credentialName`).
pub fn server_credentials<'a>(servers: &'a [&Server]) -> impl Iterator<Item = &'a str> {
    servers
        .iter()
        .filter_map(|s| terminates(s)?.credential_name.as_deref())
}

/// The secrets for these `credentialName`s, from the Secrets in the
/// proxy's namespace `ns`. A CA comes from the credential's own Secret
/// (`ca.crt`), else from `<name>-cacert`, as Istio reads it. A Secret that
/// is not there is left out: the proxy waits for it.
pub fn secrets<'a>(
    mesh: &Mesh,
    ns: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Any> {
    let mut out = BTreeMap::new();
    let cred = |name: &str| mesh.credentials.get(&(ns.to_owned(), name.to_owned()));
    for name in names {
        let (cert_name, ca_name) = sds_names(name);
        if let Some(c) = cred(name) {
            if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
                let secret = tls::Secret {
                    name: cert_name.clone(),
                    r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                        certificate_chain: Some(bytes(cert)),
                        private_key: Some(bytes(key)),
                        ..Default::default()
                    })),
                };
                out.insert(cert_name, any(&secret));
            }
        }
        let ca = cred(name)
            .and_then(|c| c.ca.as_ref())
            .or_else(|| cred(&format!("{name}-cacert")).and_then(|c| c.ca.as_ref()));
        if let Some(ca) = ca {
            let secret = tls::Secret {
                name: ca_name.clone(),
                r#type: Some(tls::secret::Type::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: Some(bytes(ca)),
                        ..Default::default()
                    },
                )),
            };
            out.insert(ca_name, any(&secret));
        }
    }
    out
}

/// A DestinationRule's `tls` as a cluster's transport socket (none for
/// DISABLE; ISTIO_MUTUAL is [`istio_mutual`]). The
/// SNI is `sni`, else `host`; the server's certificate is checked against
/// `caCertificates`, the credential's CA or the system's roots, and
/// against `subjectAltNames`, else the SNI (Istio's automatic SAN
/// validation), unless `insecureSkipVerify`.
pub fn client(
    t: &mast_api::istio::types::ClientTlsSettings,
    host: &str,
) -> Option<core::TransportSocket> {
    let mode = t.mode.as_deref().unwrap_or("DISABLE");
    if !matches!(mode, "SIMPLE" | "MUTUAL") {
        return None;
    }
    let credential = t.credential_name.as_deref().filter(|c| !c.is_empty());
    let sni = t
        .sni
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or(host.to_owned());
    let mut common = tls::CommonTlsContext::default();
    if mode == "MUTUAL" {
        certificate(
            &mut common,
            credential,
            (t.client_certificate.as_deref(), t.private_key.as_deref()),
        );
    }
    if t.insecure_skip_verify != Some(true) {
        let sans = if t.subject_alt_names.is_empty() {
            vec![sni.clone()]
        } else {
            t.subject_alt_names.clone()
        };
        let ca = t.ca_certificates.as_deref().filter(|c| !c.is_empty());
        common.validation_context_type = Some(validation(
            sans,
            credential,
            Some(ca.unwrap_or(SYSTEM_ROOTS)),
        ));
    }
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        ..Default::default()
    };
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    })
}

/// The SDS names of a workload's own certificate and of the mesh's root,
/// as istio-agent serves them.
pub const WORKLOAD_CERT: &str = "default";
pub const ROOT_CA: &str = "ROOTCA";

/// Istio's mutual TLS to a workload's sidecar (DestinationRule
/// ISTIO_MUTUAL, or auto mTLS): the workload certificate and the root
/// over SDS; the server's certificate must be the mesh's (a SPIFFE URI in
/// `trust_domain`); the SNI names the cluster, as istiod sets it
/// (`outbound_.<port>_.<subset>_.<host>`). No ALPN: the server's
/// connection manager tells HTTP/2 from HTTP/1.1 by the first bytes.
pub fn istio_mutual(cluster: &str, trust_domain: &str) -> core::TransportSocket {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    let common = tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_CERT.into())],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(tls::CertificateValidationContext {
                    match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                        matcher: Some(matcher::StringMatcher {
                            match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                                format!("spiffe://{trust_domain}/"),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(ROOT_CA.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let sni = match cluster.split('|').collect::<Vec<_>>().as_slice() {
        [dir, port, subset, host] => format!("{dir}_.{port}_.{subset}_.{host}"),
        _ => cluster.to_owned(),
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(common),
        sni,
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Istio's auto mTLS on a cluster: endpoints with the metadata
/// `tlsMode: istio` (see [`istio_endpoint`]) take [`istio_mutual`], the
/// others plain text.
pub fn auto_mtls(
    cluster: &str,
    trust_domain: &str,
) -> Vec<cluster_v3::cluster::TransportSocketMatch> {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let tls_mode = Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".into())),
            },
        )]
        .into(),
    };
    let raw = envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer {};
    vec![
        cluster_v3::cluster::TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(tls_mode),
            transport_socket: Some(istio_mutual(cluster, trust_domain)),
        },
        cluster_v3::cluster::TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(core::TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&raw))),
            }),
        },
    ]
}

/// An endpoint's metadata that says it takes Istio's mutual TLS.
pub fn istio_endpoint() -> core::Metadata {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    core::Metadata {
        filter_metadata: [(
            "envoy.transport_socket_match".to_string(),
            Struct {
                fields: [(
                    "tlsMode".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("istio".into())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// A sidecar's inbound side of mutual TLS: its workload certificate, and
/// a client certificate from the mesh's root required.
pub fn istio_mutual_server() -> core::TransportSocket {
    use tls::common_tls_context::ValidationContextType;
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_CERT.into())],
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(
                sds(ROOT_CA.into()),
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// A proxy's identity secrets: its workload certificate (for
/// `identity`) and the mesh's root.
pub fn identity_secrets(ca: &crate::ca::Ca, identity: &str) -> BTreeMap<String, Any> {
    let mut out = BTreeMap::new();
    match ca.issue(identity) {
        Ok(issued) => {
            let secret = tls::Secret {
                name: WORKLOAD_CERT.into(),
                r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                    certificate_chain: Some(bytes(issued.cert.as_bytes())),
                    private_key: Some(bytes(issued.key.as_bytes())),
                    ..Default::default()
                })),
            };
            out.insert(WORKLOAD_CERT.to_owned(), any(&secret));
        }
        Err(e) => {
            tracing::error!(identity, error = %e, "the mesh CA could not sign a workload certificate")
        }
    }
    let root = tls::Secret {
        name: ROOT_CA.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(bytes(ca.root().as_bytes())),
                ..Default::default()
            },
        )),
    };
    out.insert(ROOT_CA.to_owned(), any(&root));
    out
}

/// The system's CA bundle (Debian's), which Istio's proxies trust when a
/// DestinationRule names no CA.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[cfg(test)]
mod tests {
    use super::*;
    use mast_api::istio::types::ClientTlsSettings;

    fn json(a: &Any) -> serde_json::Value {
        mast_proxy::xds::to_json(a).expect("mast proxy decodes it")
    }

    /// A cluster with this TLS, as mast proxy reads and compiles it.
    fn in_mast_proxy(t: &ClientTlsSettings) -> serde_json::Value {
        let c = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "outbound|443||api.example.com".into(),
            transport_socket: client(t, "api.example.com"),
            ..Default::default()
        };
        let r = mast_proxy::xds::Resources::default()
            .with(mast_proxy::xds::CLUSTER, &[any(&c)])
            .expect("mast proxy reads the cluster");
        let b = mast_proxy::bootstrap::parse("static_resources: {}").expect("bootstrap");
        let cfg = mast_proxy::config::Config::build(&b, String::new(), &r, None);
        let files = t.ca_certificates.is_some() || t.client_certificate.is_some();
        assert!(files || cfg.is_ok(), "mast proxy runs it: {:?}", cfg.err());
        json(&any(&c))["transport_socket"]["typed_config"].clone()
    }

    fn settings(v: serde_json::Value) -> ClientTlsSettings {
        serde_json::from_value(v).expect("ClientTlsSettings")
    }

    #[test]
    fn destination_rule_tls_is_istios_upstream_tls_context() {
        use serde_json::json;
        assert!(client(&settings(json!({"mode": "DISABLE"})), "h").is_none());
        assert!(client(&settings(json!({"mode": "ISTIO_MUTUAL"})), "h").is_none());
        // SIMPLE: the host is the SNI and the SAN; the system's roots.
        let t = in_mast_proxy(&settings(json!({"mode": "SIMPLE"})));
        assert_eq!(t["sni"], "api.example.com");
        let v = &t["common_tls_context"]["validation_context"];
        assert_eq!(v["trusted_ca"]["filename"], SYSTEM_ROOTS);
        assert_eq!(v["match_subject_alt_names"][0]["exact"], "api.example.com");
        // insecureSkipVerify: no validation at all, as in Istio.
        let t = in_mast_proxy(&settings(
            json!({"mode": "SIMPLE", "insecureSkipVerify": true, "sni": "x.test"}),
        ));
        assert_eq!(t["sni"], "x.test");
        assert!(t["common_tls_context"].get("validation_context").is_none());
        // MUTUAL with a credential: certificate and CA over SDS by
        // istiod's names, the SANs as given.
        let t = in_mast_proxy(&settings(
            json!({"mode": "MUTUAL", "credentialName": "client", "subjectAltNames": ["spiffe://a"]}),
        ));
        let c = &t["common_tls_context"];
        assert_eq!(
            c["tls_certificate_sds_secret_configs"][0]["name"],
            "kubernetes://client"
        );
        let comb = &c["combined_validation_context"];
        assert_eq!(
            comb["validation_context_sds_secret_config"]["name"],
            "kubernetes://client-cacert"
        );
        assert_eq!(
            comb["default_validation_context"]["match_subject_alt_names"][0]["exact"],
            "spiffe://a"
        );
        // MUTUAL with files.
        let t = in_mast_proxy(&settings(
            json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"}),
        ));
        let c = &t["common_tls_context"];
        assert_eq!(
            c["tls_certificates"][0]["certificate_chain"]["filename"],
            "/c.pem"
        );
        assert_eq!(c["validation_context"]["trusted_ca"]["filename"], "/ca.pem");
    }

    #[test]
    fn https_servers_are_chains_by_sni_with_their_credentials() {
        use serde_json::json;
        let server =
            |v: serde_json::Value| -> Server { serde_json::from_value(v).expect("Server") };
        let simple = server(
            json!({"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["ns/a.example.com"], "tls": {"mode": "SIMPLE", "credentialName": "a", "minProtocolVersion": "TLSV1_3"}}),
        );
        let mutual = server(
            json!({"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "MUTUAL", "credentialName": "b"}}),
        );
        let passthrough = server(
            json!({"port": {"number": 443, "name": "tls", "protocol": "TLS"},
            "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}}),
        );
        let l = https_listener(443, "https.443", &[&simple, &mutual, &passthrough]);
        let r = mast_proxy::xds::Resources::default()
            .with(mast_proxy::xds::LISTENER, &[any(&l)])
            .expect("mast proxy reads the listener");
        let j = &json(&any(&l));
        let chains = j["filter_chains"].as_array().expect("chains");
        assert_eq!(chains.len(), 2, "PASSTHROUGH is not a chain here");
        assert_eq!(
            chains[0]["filter_chain_match"]["server_names"][0],
            "a.example.com"
        );
        let ctx = &chains[0]["transport_socket"]["typed_config"];
        assert_eq!(
            ctx["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"],
            "TLSv1_3"
        );
        assert!(chains[1]["filter_chain_match"]
            .get("server_names")
            .is_none());
        let ctx = &chains[1]["transport_socket"]["typed_config"];
        assert_eq!(ctx["require_client_certificate"], true);
        // mast proxy compiles it, waiting for the secrets over SDS.
        let b = mast_proxy::bootstrap::parse("dynamic_resources: {ads_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}}\nstatic_resources: {clusters: [{name: xds, type: STATIC, load_assignment: {cluster_name: xds, endpoints: []}}]}").expect("bootstrap");
        let cfg = mast_proxy::config::Config::build(&b, String::new(), &r, None);
        assert!(cfg.is_ok(), "{:?}", cfg.err());
        assert_eq!(
            r.secret_names(&Default::default())
                .into_iter()
                .collect::<Vec<_>>(),
            ["kubernetes://a", "kubernetes://b", "kubernetes://b-cacert"]
        );
        // The secrets, from the Secrets of the proxy's namespace.
        let mut mesh = Mesh::default();
        let cred = |ca: bool| crate::model::Credential {
            cert: Some(b"cert".to_vec()),
            key: Some(b"key".to_vec()),
            ca: ca.then(|| b"ca".to_vec()),
        };
        mesh.credentials
            .insert(("istio-system".into(), "a".into()), cred(false));
        mesh.credentials
            .insert(("istio-system".into(), "b".into()), cred(true));
        mesh.credentials
            .insert(("other".into(), "c".into()), cred(true));
        let s = secrets(&mesh, "istio-system", ["a", "b", "c"]);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            ["kubernetes://a", "kubernetes://b", "kubernetes://b-cacert"]
        );
    }
}
