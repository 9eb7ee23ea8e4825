//! Where an error is: byte spans of the TOML text turned into the file's
//! line and column and the dotted key (`probe[2].timeout`, 1-based), and
//! the spans of a table, a `[[probe]]` by name, or the n-th `[[rule]]`.
//! Pure text work: no TOML parsing besides toml's own error spans.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use super::{ConfigError, Rule};

/// The source text, kept to turn byte spans into line, column and key.
pub(crate) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key_path_at(self.text, span.start),
            message: message.into(),
        }
    }

    /// An error about `key` inside the table spanning `table`: points at the
    /// key's own line when it is written there.
    pub(super) fn key_error(
        &self,
        table: &Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = find_key(self.text, table, key).unwrap_or_else(|| table.clone());
        let mut err = self.error(span, message);
        if let ConfigError::Invalid { key: k, .. } = &mut err {
            if !k.ends_with(key) {
                *k = format!("{k}.{key}");
            }
        }
        err
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

fn assignment_key(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let eq = line.find('=')?;
    let key = line[..eq].trim().trim_matches('"');
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
    .then_some(key)
}

/// The dotted key at a byte offset: the enclosing table (`probe[2]`,
/// 1-based for arrays of tables) and the nearest `key =` at or above it.
fn key_path_at(text: &str, offset: usize) -> String {
    let target_line = line_col(text, offset).0;
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if i + 1 > target_line {
            break;
        }
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
        {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_default();
            *n += 1;
            table = format!("{name}[{n}]");
            key = None;
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
            key = None;
        } else if let Some(k) = assignment_key(line) {
            key = Some(k.to_owned());
        }
    }
    match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) if table.is_empty() => "(top level)".to_owned(),
        (_, None) => table,
    }
}

fn find_key(text: &str, within: &Range<usize>, key: &str) -> Option<Range<usize>> {
    let region = text.get(within.clone())?;
    let mut offset = within.start;
    for line in region.split_inclusive('\n') {
        if assignment_key(line) == Some(key) {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + key.len());
        }
        offset += line.len();
    }
    None
}

pub(super) fn toml_error(src: &Source, e: toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_owned();
    let mut err = src.error(span.clone(), message.clone());
    // A missing top-level table is reported against the whole document:
    // name the table itself, not whatever header comes first.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    if let (Some(field), ConfigError::Invalid { key, .. }) = (missing, &mut err) {
        if span.start == 0 {
            *key = field.to_owned();
        } else {
            // Name the key that is missing, in the table that lacks it. The
            // span may be one segment of a dotted header (`colors` in
            // `[colors.blue]` when `[colors.green]` is missing): the table
            // is the header up to that segment, not the whole header.
            let at = src.text.get(span.clone()).unwrap_or("");
            let line_start = src.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let before = &src.text[line_start..span.start];
            let table = if !at.is_empty()
                && !at.contains(['[', '\n', '='])
                && before.trim_start().starts_with('[')
            {
                let header = &src.text[line_start..span.end];
                header.trim().trim_start_matches('[').trim().to_owned()
            } else {
                key.clone()
            };
            *key = format!("{table}.{field}");
        }
    }
    err
}

/// The span from a `[name]` header to the next header (or the end).
pub(super) fn header_span(text: &str, name: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if start.is_some() {
                return start.map(|s| s..offset);
            }
            if trimmed.trim_start_matches('[').trim_end_matches(']').trim() == name {
                start = Some(offset);
            }
        }
        offset += line.len();
    }
    start.map(|s| s..text.len())
}

/// The span of the `[[probe]]` table whose `name` is `name`.
pub(super) fn probe_span(text: &str, name: &str) -> Option<Range<usize>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().starts_with('[') {
            starts.push((offset, line.trim() == "[[probe]]"));
        }
        offset += line.len();
    }
    starts.push((text.len(), false));
    starts
        .windows(2)
        .filter(|w| w[0].1)
        .map(|w| w[0].0..w[1].0)
        .find(|range| {
            find_key(text, range, "name").is_some_and(|k| {
                text[k.start..range.end].lines().next().is_some_and(|l| {
                    l.contains(&format!("\"{name}\"")) || l.contains(&format!("'{name}'"))
                })
            })
        })
}

pub(super) fn rule_span(text: &str, rules: &[Rule], rule: &Rule) -> Range<usize> {
    // The n-th `[[rule]]` header in the text is the n-th rule.
    let index = rules.iter().position(|r| r == rule).unwrap_or(0);
    let mut offset = 0;
    let mut seen = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "[[rule]]" {
            if seen == index {
                return offset..offset + line.trim_end().len();
            }
            seen += 1;
        }
        offset += line.len();
    }
    0..0
}
