//! Prometheus selectors (`name{label="v",code=~"5.."}`, as in PromQL):
//! parsed once when the configuration loads, so a typo is a config error
//! naming the key, and held parsed in `PrometheusCheck` for every scrape.
//! The `prometheus` probe only matches series against them.

use std::collections::HashMap;
use std::fmt;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: MatchOp,
    value: String,
    re: Option<Regex>,
}

impl Matcher {
    fn matches(&self, labels: &HashMap<String, String>) -> bool {
        // As in Prometheus, a missing label is the empty string.
        let v = labels.get(&self.label).map(String::as_str).unwrap_or("");
        match (self.op, &self.re) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Ne, _) => v != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(v),
            (MatchOp::NotRe, Some(re)) => !re.is_match(v),
            (MatchOp::Re | MatchOp::NotRe, None) => false,
        }
    }
}

/// A metric name with optional label matchers, as in PromQL:
/// `http_requests_total{code=~"5..",method!="OPTIONS"}`. Regular
/// expressions are anchored at both ends, as Prometheus anchors them.
#[derive(Clone)]
pub struct Selector {
    pub name: String,
    matchers: Vec<Matcher>,
    /// As written (trimmed): what `Debug` and `Display` show, and what a
    /// reload compares.
    text: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let text = text.trim();
        let (name, rest) = match text.find('{') {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text, None),
        };
        let name = name.trim();
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !valid_name {
            return Err(format!(
                "{text:?}: expected a metric name, optionally with label matchers, like 'http_requests_total{{code=~\"5..\"}}'"
            ));
        }
        let mut matchers = Vec::new();
        if let Some(rest) = rest {
            let inner = rest
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| format!("{text:?}: label matchers must end with '}}'"))?;
            let mut chars = inner.trim();
            while !chars.is_empty() {
                let (m, after) = parse_matcher(chars).map_err(|e| format!("{text:?}: {e}"))?;
                matchers.push(m);
                chars = after.trim_start();
                if let Some(after_comma) = chars.strip_prefix(',') {
                    chars = after_comma.trim_start();
                } else if !chars.is_empty() {
                    return Err(format!("{text:?}: expected ',' between label matchers"));
                }
            }
        }
        Ok(Selector {
            name: name.to_owned(),
            matchers,
            text: text.to_owned(),
        })
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a series with these labels is selected (its name is
    /// compared by the caller: a histogram's series carry suffixes).
    pub fn matches_labels(&self, labels: &HashMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.matches(labels))
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Selector").field(&self.text).finish()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `label op "value"`; returns it and the text after it.
fn parse_matcher(text: &str) -> Result<(Matcher, &str), String> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let label = &text[..end];
    if label.is_empty() {
        return Err("expected a label name".into());
    }
    let rest = text[end..].trim_start();
    let (op, rest) = [
        ("=~", MatchOp::Re),
        ("!~", MatchOp::NotRe),
        ("!=", MatchOp::Ne),
        ("=", MatchOp::Eq),
    ]
    .into_iter()
    .find_map(|(t, op)| rest.strip_prefix(t).map(|r| (op, r.trim_start())))
    .ok_or_else(|| format!("label {label}: expected one of = != =~ !~"))?;
    let quote = rest
        .chars()
        .next()
        .filter(|c| *c == '"' || *c == '\'')
        .ok_or_else(|| format!("label {label}: the value must be quoted"))?;
    let mut value = String::new();
    let mut escaped = false;
    let mut close = None;
    for (i, c) in rest.char_indices().skip(1) {
        if escaped {
            value.push(match c {
                'n' => '\n',
                't' => '\t',
                other => other,
            });
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            close = Some(i);
            break;
        } else {
            value.push(c);
        }
    }
    let close = close.ok_or_else(|| format!("label {label}: unterminated value"))?;
    let re = match op {
        MatchOp::Re | MatchOp::NotRe => Some(
            Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("label {label}: bad regular expression: {e}"))?,
        ),
        _ => None,
    };
    Ok((
        Matcher {
            label: label.to_owned(),
            op,
            value,
            re,
        },
        &rest[close + quote.len_utf8()..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match_like_promql() {
        let s = Selector::parse(r#"http_requests_total{code=~"5..", method!='GET'}"#).unwrap();
        assert_eq!(s.name, "http_requests_total");
        let labels = |code: &str, method: &str| {
            HashMap::from([
                ("code".to_owned(), code.to_owned()),
                ("method".to_owned(), method.to_owned()),
            ])
        };
        assert!(s.matches_labels(&labels("503", "POST")));
        assert!(!s.matches_labels(&labels("503", "GET")));
        assert!(
            !s.matches_labels(&labels("5030", "POST")),
            "regexes are anchored"
        );
        assert!(!s.matches_labels(&labels("200", "POST")));
        for bad in [
            "",
            "9metric",
            "m{code=5}",
            "m{code=\"5\"",
            "m{code~\"5\"}",
            "m{code=~\"(\"}",
            "m{a=\"1\" b=\"2\"}",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
