//! Authentication: X.509 client certificates signed by the cluster CA (the
//! user is the subject's CN, groups its O fields) and static bearer tokens
//! from a token file in kube-apiserver's `--token-auth-file` format.

use std::collections::HashMap;
use std::path::Path;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user a verified client certificate names.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(User { name, groups })
}

/// Parse a token file: `token,user,uid[,"group1,group2"]` per line.
pub fn parse_token_file(text: &str) -> HashMap<String, User> {
    let mut out = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, ',');
        let (Some(token), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let _uid = parts.next();
        let groups = parts
            .next()
            .map(|g| {
                g.trim_matches('"')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            token.trim().to_owned(),
            User {
                name: name.trim().to_owned(),
                groups,
            },
        );
    }
    out
}

/// Load the token file, creating it with the admin token if it is missing.
pub fn load_tokens(path: &Path, admin_token: &str) -> std::io::Result<HashMap<String, User>> {
    if !path.exists() {
        std::fs::write(
            path,
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(parse_token_file(&std::fs::read_to_string(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines() {
        let t = parse_token_file("# c\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n");
        assert_eq!(t["abc"].groups, vec!["dev", "ops"]);
        assert_eq!(t["xyz"].name, "bob");
    }
}
