//! Label and field selectors in Kubernetes' string syntax.
//!
//! `app=web,tier!=db,env in (prod,staging),!canary` and
//! `metadata.name=x,status.phase!=Running` parse into requirements that match
//! against an object's JSON.

use serde_json::Value;

/// A selector that failed to parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, SelectorError> {
    let k = k.trim();
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(SelectorError(format!("invalid label key \"{k}\"")));
    }
    Ok(k.to_owned())
}

fn check_value(v: &str) -> Result<String, SelectorError> {
    let v = v.trim();
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(SelectorError(format!("invalid label value: \"{v}\"")));
    }
    Ok(v.to_owned())
}

fn parse_set(s: &str) -> Result<Vec<String>, SelectorError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("found '{s}', expected: '('")))?;
    inner
        .split(',')
        .map(check_value)
        .collect::<Result<Vec<_>, _>>()
}

impl LabelSelector {
    /// Parse the query-string form used by `?labelSelector=`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError(format!("empty requirement in \"{s}\"")));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement {
                    key: check_key(k)?,
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: check_key(k)?,
                    op: Op::NotEq(check_value(v)?),
                }
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement {
                    key: check_key(k)?,
                    op: Op::Eq(check_value(v)?),
                }
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement {
                    key: check_key(k)?,
                    op: Op::Eq(check_value(v)?),
                }
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement {
                    key: check_key(k)?,
                    op: Op::NotIn(parse_set(v)?),
                }
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement {
                    key: check_key(k)?,
                    op: Op::In(parse_set(v)?),
                }
            } else if let Some((k, v)) = part.split_once('>') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| SelectorError(format!("invalid number \"{v}\"")))?;
                Requirement {
                    key: check_key(k)?,
                    op: Op::Gt(n),
                }
            } else if let Some((k, v)) = part.split_once('<') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| SelectorError(format!("invalid number \"{v}\"")))?;
                Requirement {
                    key: check_key(k)?,
                    op: Op::Lt(n),
                }
            } else {
                Requirement {
                    key: check_key(part)?,
                    op: Op::Exists,
                }
            };
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    /// A selector from a `metav1.LabelSelector` object (matchLabels and
    /// matchExpressions).
    pub fn from_object(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::Eq(v.as_str().unwrap_or_default().into()),
            });
        }
        for e in sel["matchExpressions"].as_array().into_iter().flatten() {
            let key = e["key"].as_str().unwrap_or_default().to_owned();
            let vals: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let op = match e["operator"].as_str().unwrap_or_default() {
                "In" => Op::In(vals),
                "NotIn" => Op::NotIn(vals),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::NotExists,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            };
            reqs.push(Requirement { key, op });
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Does a `metadata.labels` map satisfy every requirement?
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.reqs.iter().all(|r| match &r.op {
            Op::Eq(v) => get(&r.key) == Some(v.as_str()),
            Op::NotEq(v) => get(&r.key) != Some(v.as_str()),
            Op::In(vs) => get(&r.key).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => get(&r.key).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Op::Exists => get(&r.key).is_some(),
            Op::NotExists => get(&r.key).is_none(),
            Op::Gt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector: `field=value` and `field!=value` terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = vec![];
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        for part in s.split(',') {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            terms.push((k.trim().to_owned(), eq, v.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    /// The field paths this selector names.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(k, _, _)| k.as_str())
    }

    /// Match against the object; a missing field compares as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(k, eq, v)| {
            let actual = match json_path(obj, k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }

    /// The value of an equality term on `field`, if any (to narrow a read).
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|(k, eq, _)| k == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// Resolve a simple dotted path (`.spec.replicas`, `{.status.phase}`,
/// `metadata.name`) in `obj`. Only plain field names are supported, which is
/// what field selectors and most printer columns use.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let p = p.strip_prefix('.').unwrap_or(p);
    let mut cur = obj;
    for seg in p.split('.').filter(|s| !s.is_empty()) {
        if let Some((name, idx)) = seg.split_once('[') {
            cur = cur.get(name)?;
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get(i)?;
        } else {
            cur = cur.get(seg)?;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_and_match() {
        let labels = json!({"app": "web", "tier": "frontend", "env": "prod"});
        for (sel, want) in [
            ("tier=frontend", true),
            ("tier==frontend,app=web", true),
            ("tier!=frontend", false),
            ("env in (prod,staging)", true),
            ("env notin (prod)", false),
            ("canary", false),
            ("!canary", true),
            ("app,env in (prod)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&labels),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a=b=c").is_err());
        assert!(LabelSelector::parse("env in prod").is_err());
    }

    #[test]
    fn field_selectors_match_paths() {
        let pod = json!({"metadata": {"name": "a", "namespace": "default"}, "status": {"phase": "Running"}, "spec": {}});
        assert!(
            FieldSelector::parse("metadata.name=a,status.phase!=Pending")
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=n1")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
