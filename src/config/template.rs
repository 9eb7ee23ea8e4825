//! `[[notify]] format = "template"`: the request a notice becomes, rendered
//! with minijinja from a template file (the body) and two short templates
//! from the config (`method`, `path`).
//!
//! This file owns the template side only: loading and checking a template
//! (at config load, so `check` and reload reject a broken one with the
//! file, line and key: each part must render for sample notices),
//! rendering it, and the fields a template sees ([`context`]). Delivery —
//! headers, retries, `Retry-After`, what an opening request answered —
//! stays in `notifier`, which calls [`NotifyTemplate::render`].
//!
//! Auto-escaping is off: a JSON template writes `{{ summary | tojson }}`
//! where it wants a JSON string. A body that renders empty (only
//! whitespace) means "nothing to send for this event".

use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Value, json};

use crate::model::{Event, Notice, Phase, Severity, format_ms};

/// A checked template set for one `[[notify]]` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTemplate {
    /// The body template's file, for messages.
    pub file: PathBuf,
    body: String,
    /// Rendered to the HTTP method (default `POST`).
    method: String,
    /// Rendered and appended to the target's `url` (default empty).
    path: String,
}

/// One rendered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub method: String,
    pub path: String,
    /// Empty: nothing to send for this event.
    pub body: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Templates are short and rendered per notice: a loop gone wrong must
    // not hang the notification worker.
    env.set_recursion_limit(64);
    env
}

/// A template error as one line: what is wrong, and where in the template.
fn describe(file: &Path, what: &str, e: &minijinja::Error) -> String {
    let place = match e.line() {
        Some(line) => format!("{what} {} line {line}", file.display()),
        None => format!("{what} {}", file.display()),
    };
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    format!("{place}: {}{detail}", e.kind())
}

impl NotifyTemplate {
    /// Read and check: each part must parse, and must render for a sample
    /// opening, closing and informational notice (to a JSON document when
    /// `json` is set, to a known method).
    pub fn load(
        file: &Path,
        method: Option<&str>,
        path: Option<&str>,
        json_body: bool,
    ) -> Result<NotifyTemplate, String> {
        let body = crate::hostfile::read_capped(file, super::CONFIG_CAP)
            .map_err(|e| format!("cannot read template {}: {e}", file.display()))?;
        let t = NotifyTemplate {
            file: file.to_path_buf(),
            body,
            method: method.unwrap_or("POST").to_owned(),
            path: path.unwrap_or("").to_owned(),
        };
        let env = environment();
        env.template_from_str(&t.body)
            .map_err(|e| describe(file, "template", &e))?;
        env.template_from_str(&t.method)
            .map_err(|e| describe(Path::new("method"), "in", &e))?;
        env.template_from_str(&t.path)
            .map_err(|e| describe(Path::new("path"), "in", &e))?;
        for event in [
            Event::RollbackStarted,
            Event::RollbackCompleted,
            Event::DeployReport,
        ] {
            let sample = context(&sample_notice(event), None, &[]);
            let r = t.render(&sample)?;
            reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|_| {
                format!(
                    "method renders to {:?} for a {:?} notice: expected an HTTP method like POST or PATCH",
                    r.method,
                    event.as_str()
                )
            })?;
            if json_body && !r.body.trim().is_empty() {
                serde_json::from_str::<Value>(&r.body).map_err(|e| {
                    format!(
                        "template {} does not render to JSON for a {:?} notice ({e}); \
                         write strings as {{{{ summary | tojson }}}}",
                        file.display(),
                        event.as_str()
                    )
                })?;
            }
        }
        Ok(t)
    }

    /// Render the request for one notice's fields (see [`context`]).
    pub fn render(&self, ctx: &Value) -> Result<Rendered, String> {
        let env = environment();
        let one = |src: &str, what: &Path| -> Result<String, String> {
            env.render_str(src, minijinja::value::Serde(ctx))
                .map_err(|e| describe(what, "rendering", &e))
        };
        Ok(Rendered {
            method: one(&self.method, Path::new("method"))?
                .trim()
                .to_ascii_uppercase(),
            path: one(&self.path, Path::new("path"))?.trim().to_owned(),
            body: one(&self.body, &self.file)?,
        })
    }
}

/// What a template sees: the notice's fields (as the `json` format sends
/// them), plus `title`, `headline`, `at`, `key`, `phase`, `resolved`,
/// `drill`, `opened` (what the opening request for the same `key`
/// answered, as JSON, when it answered JSON) and `secret` (the target's
/// `secrets`, by name).
pub fn context(n: &Notice, opened: Option<&Value>, secrets: &[(String, String)]) -> Value {
    let mut v = serde_json::to_value(n).unwrap_or_else(|_| json!({}));
    v["at"] = json!(format_ms(n.at_ms));
    v["title"] = json!(n.event.as_str());
    v["headline"] = json!(n.headline());
    v["key"] = json!(n.key());
    v["phase"] = json!(n.phase().as_str());
    v["resolved"] = json!(n.phase() == Phase::Close);
    v["drill"] = json!(n.drill.is_some());
    if let Some(o) = opened {
        v["opened"] = o.clone();
    }
    v["secret"] = Value::Object(secrets.iter().map(|(k, s)| (k.clone(), json!(s))).collect());
    v
}

fn sample_notice(event: Event) -> Notice {
    let mut n = Notice::new(
        event,
        Severity::Critical,
        "service",
        "sample notice rendered by `check`".into(),
    );
    n.incident = Some(1);
    n.rule = Some("critical: health_failures >= 5".into());
    n.color = Some(crate::model::Color::Blue);
    n.from = Some(crate::model::Color::Blue);
    n.to = Some(crate::model::Color::Green);
    n.version = Some("0000000".into());
    n.from_version = Some("1111111".into());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("t.json");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn renders_notice_fields_method_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            r#"{"k": {{ key | tojson }}, "s": {{ summary | tojson }}, "r": {{ resolved | tojson }}}"#,
        );
        let t = NotifyTemplate::load(
            &file,
            Some("{% if opened %}patch{% else %}POST{% endif %}"),
            Some("{% if opened %}/{{ opened.id }}{% endif %}"),
            true,
        )
        .unwrap();
        let mut n = sample_notice(Event::RollbackCompleted);
        n.summary = "say \"hi\"".into();
        let r = t.render(&context(&n, None, &[])).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "");
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["s"], "say \"hi\"");
        assert_eq!(body["k"], "rollbackd/service/incident/1");
        assert_eq!(body["r"], true);
        let r = t
            .render(&context(&n, Some(&json!({"id": "p7"})), &[]))
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PATCH", "/p7"));
    }

    #[test]
    fn a_syntax_error_names_the_template_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{\n\"a\": {{ summary | tojson }\n}");
        let e = NotifyTemplate::load(&file, None, None, true).unwrap_err();
        assert!(e.contains("t.json line 2"), "{e}");
    }

    #[test]
    fn a_body_that_is_not_json_is_refused_when_json_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), r#"{"s": "{{ summary }}"}"#);
        // Quotes inside the summary would break it: the sample has none,
        // so this one passes; an unquoted string does not.
        assert!(NotifyTemplate::load(&file, None, None, true).is_ok());
        let file = write(dir.path(), r#"{"s": {{ summary }}}"#);
        let e = NotifyTemplate::load(&file, None, None, true).unwrap_err();
        assert!(e.contains("does not render to JSON"), "{e}");
        assert!(NotifyTemplate::load(&file, None, None, false).is_ok());
    }

    #[test]
    fn a_method_that_is_no_method_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{}");
        let e = NotifyTemplate::load(&file, Some("PO ST"), None, true).unwrap_err();
        assert!(e.contains("expected an HTTP method"), "{e}");
    }

    const BASE: &str = r#"[daemon]
state_dir = "state"

[service]
name = "beluga"

[colors.blue]
base_url = "http://127.0.0.1:8081"
[colors.green]
base_url = "http://127.0.0.1:8082"

[[probe]]
name = "healthz"
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
health = true

[rollback]
command = ["/bin/true", "{to}"]
"#;

    /// Config errors for the template keys name the file, line and key.
    fn config_error(dir: &Path, notify: &str) -> (usize, String, String) {
        let path = dir.join("rollbackd.toml");
        let text =
            format!("{BASE}\n[[notify]]\nkind = \"webhook\"\nurl = \"env:X_HOOK\"\n{notify}");
        match crate::config::Config::parse(&path, &text) {
            Err(crate::config::ConfigError::Invalid {
                path: p,
                line,
                key,
                message,
                ..
            }) => {
                assert_eq!(p, path);
                (line, key, message)
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("config was accepted:\n{text}"),
        }
    }

    #[test]
    fn template_keys_are_checked_with_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let base_lines = BASE.lines().count();
        // A template key on a built-in format.
        let (line, key, message) =
            config_error(dir.path(), "format = \"slack\"\nmethod = \"PUT\"\n");
        assert_eq!((line, key.as_str()), (base_lines + 6, "notify[1].method"));
        assert!(
            message.contains("only for format = \"template\""),
            "{message}"
        );
        // format = "template" without a template.
        let (_, key, message) = config_error(dir.path(), "format = \"template\"\n");
        assert_eq!(key, "notify[1].format");
        assert!(message.contains("needs `template`"), "{message}");
        // A missing file, and a template with a syntax error on its line 3.
        let (line, key, message) = config_error(
            dir.path(),
            "format = \"template\"\ntemplate = \"nope.json\"\n",
        );
        assert_eq!((line, key.as_str()), (base_lines + 6, "notify[1].template"));
        assert!(message.contains("cannot read template"), "{message}");
        std::fs::write(
            dir.path().join("bad.json"),
            "{\n\"a\": 1,\n\"b\": {{ summary | }}\n}",
        )
        .unwrap();
        let (_, key, message) = config_error(
            dir.path(),
            "format = \"template\"\ntemplate = \"bad.json\"\n",
        );
        assert_eq!(key, "notify[1].template");
        assert!(message.contains("bad.json line 3"), "{message}");
        // A header name that cannot be one, and a content type that is none.
        let (_, key, _) = config_error(
            dir.path(),
            "format = \"json\"\nheaders = { \"Bad Name\" = \"x\" }\n",
        );
        assert_eq!(key, "notify[1].headers");
        let (_, key, _) = config_error(dir.path(), "format = \"json\"\ncontent_type = \"json\"\n");
        assert_eq!(key, "notify[1].content_type");
    }

    #[test]
    fn a_template_target_loads_with_secret_headers_hidden() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.json"), "{\"k\": {{ key | tojson }}}").unwrap();
        let path = dir.path().join("rollbackd.toml");
        let text = format!(
            "{BASE}\n[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nformat = \"template\"\n\
             template = \"t.json\"\nheaders = {{ Authorization = \"file:{}\" }}\n",
            dir.path().join("token").display()
        );
        std::fs::write(dir.path().join("token"), "Bearer s3cr3t-t0ken\n").unwrap();
        let c = crate::config::Config::parse(&path, &text).unwrap();
        let n = &c.notify[0];
        assert_eq!(n.headers[0].1.expose(), Ok("Bearer s3cr3t-t0ken"));
        assert!(n.template.is_some());
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    /// The templates `config/templates/` ships load, check and render.
    #[test]
    fn shipped_templates_load_and_render_json() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
        let cases = [
            ("pagerduty.json", None, None),
            (
                "statuspage.json",
                Some("{{ 'PATCH' if opened else 'POST' }}"),
                Some("{% if opened %}/{{ opened.id }}{% endif %}"),
            ),
            (
                "github-commit-comment.json",
                None,
                Some("/commits/{{ from_version if incident else version }}/comments"),
            ),
            ("discord-announcement.json", None, None),
        ];
        for (name, method, path) in cases {
            let t = NotifyTemplate::load(&dir.join(name), method, path, true)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let open = t
                .render(&context(&sample_notice(Event::RollbackStarted), None, &[]))
                .unwrap();
            if !open.body.trim().is_empty() {
                serde_json::from_str::<Value>(&open.body).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn secrets_reach_the_template_and_not_the_notice() {
        let n = sample_notice(Event::RollbackStarted);
        let ctx = context(&n, None, &[("routing_key".into(), "R0UT1NG".into())]);
        assert_eq!(ctx["secret"]["routing_key"], "R0UT1NG");
        assert!(!format!("{n:?}").contains("R0UT1NG"));
        assert_eq!(ctx["phase"], "open");
    }
}
