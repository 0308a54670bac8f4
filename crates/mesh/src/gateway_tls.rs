//! HTTPS at ingress gateways: Gateway servers with `tls.mode` SIMPLE,
//! MUTUAL or OPTIONAL_MUTUAL become one listener per port with a filter
//! chain per server (by SNI, the server's hosts), terminating TLS with the
//! server's certificate, as istiod builds them. The certificate comes from
//! a Kubernetes Secret (`credentialName`, in the gateway's namespace) over
//! SDS on the ADS stream, as `kubernetes://<name>` and, for a client CA,
//! `kubernetes://<name>-cacert`; or from files (`serverCertificate`,
//! `privateKey`, `caCertificates`) in the proxy's filesystem.

use crate::envoy::{any, hcm_filter, rds};
use crate::model::Mesh;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use mast_api::istio::types::{Server, ServerTlsSettings};
use std::collections::BTreeMap;

/// Whether a server terminates TLS at the gateway (HTTPS with SIMPLE,
/// MUTUAL or OPTIONAL_MUTUAL). PASSTHROUGH and ISTIO_MUTUAL are not
/// implemented yet.
pub fn terminates(s: &Server) -> Option<&ServerTlsSettings> {
    let proto = s.port.protocol_upper();
    let t = s.tls.as_ref()?;
    let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
    (proto == "HTTPS" && matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")).then_some(t)
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

/// The server's `DownstreamTlsContext`.
fn context(t: &ServerTlsSettings) -> tls::DownstreamTlsContext {
    use tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
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
    match credential {
        Some(c) => common
            .tls_certificate_sds_secret_configs
            .push(sds(sds_names(c).0)),
        None => common.tls_certificates.push(tls::TlsCertificate {
            certificate_chain: t.server_certificate.as_deref().map(file),
            private_key: t.private_key.as_deref().map(file),
            ..Default::default()
        }),
    }
    let mutual = mode != "SIMPLE";
    if mutual {
        let sans = t
            .subject_alt_names
            .iter()
            .map(|s| matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.clone())),
                ..Default::default()
            })
            .collect();
        #[allow(deprecated)] // Istio sets the same field.
        let mut v = tls::CertificateValidationContext {
            match_subject_alt_names: sans,
            ..Default::default()
        };
        common.validation_context_type = Some(match credential {
            Some(c) => ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(v),
                    validation_context_sds_secret_config: Some(sds(sds_names(c).1)),
                    ..Default::default()
                },
            ),
            None => {
                v.trusted_ca = t.ca_certificates.as_deref().map(file);
                ValidationContextType::ValidationContext(v)
            }
        });
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
fn server_names(s: &Server) -> Vec<String> {
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

/// The secrets these servers name by `credentialName`, from the Secrets
/// in the gateway's namespace `ns`. A CA comes from the credential's own
/// Secret (`ca.crt`), else from `<name>-cacert`, as Istio reads it. A
/// Secret that is not there is left out: the proxy waits for it.
pub fn secrets(mesh: &Mesh, ns: &str, servers: &[&Server]) -> BTreeMap<String, Any> {
    let mut out = BTreeMap::new();
    let cred = |name: &str| mesh.credentials.get(&(ns.to_owned(), name.to_owned()));
    for s in servers {
        let Some(name) = terminates(s).and_then(|t| t.credential_name.as_deref()) else {
            continue;
        };
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
