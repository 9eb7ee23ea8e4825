//! Tests of loading a whole configuration: defaults, and errors located
//! at file, line and key.

use super::*;
use crate::model::Signal;

const GOOD: &str = r#"
[daemon]
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
health = true

[rollback]
command = ["/bin/true", "{to}"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/rollbackd/test.toml"), text)
}

#[test]
fn load_refuses_a_fifo_and_dev_zero_at_once_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rollbackd.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = Config::load(&fifo).unwrap_err().to_string();
    assert!(e.contains(&fifo.display().to_string()), "{e}");
    assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    let e = Config::load(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/zero") && e.contains("a character device"),
        "{e}"
    );
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(CONFIG_CAP as usize + 1)).unwrap();
    let e = Config::load(&big).unwrap_err().to_string();
    assert!(e.contains("big.toml") && e.contains("limit"), "{e}");
}

fn invalid(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line,
            key,
            message,
            path,
            ..
        }) => {
            assert_eq!(path, Path::new("/etc/rollbackd/test.toml"));
            (line, key, message)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("config was accepted"),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn good_config_gets_defaults_and_the_default_matrix() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.daemon.state_dir, Path::new("/etc/rollbackd/state"));
    assert_eq!(c.probes[0].interval, Duration::from_secs(5));
    assert_eq!(c.probes[0].scope, Scope::PerColor);
    assert!(c.default_rules);
    assert_eq!(c.rules.len(), 9);
    let crit = &c.rules[0];
    assert_eq!(crit.severity, Severity::Critical);
    assert_eq!(crit.condition.to_string(), "health_failures >= 5");
    assert_eq!(crit.probes, vec!["healthz".to_owned()]);
    // Fast confirm is on by default: 200ms, or the interval if shorter.
    assert_eq!(
        c.probes[0].confirm_interval,
        Some(Duration::from_millis(200))
    );
    assert_eq!(c.daemon.assumed_noise, 0.02);
    assert_eq!(
        c.detection_time(crit),
        Detection::Within(Duration::from_millis(7_800)),
        "5s interval + 2s timeout, the four confirms started 0.2s apart without waiting"
    );
    assert_eq!(
        c.median_detection(crit),
        Some(Duration::from_millis(3_300)),
        "half an interval, then four confirms of 0.2s"
    );
    assert_eq!(
        c.endpoint_url(&Endpoint::Relative("/healthz".into()), Some(Color::Green))
            .unwrap()
            .as_str(),
        "http://127.0.0.1:8082/healthz"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = GOOD.replace("health = true", "health = true\nhelth = false");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "helth"));
    assert_eq!(key, "probe[1].helth");
    assert!(message.contains("unknown field `helth`"), "{message}");
}

#[test]
fn entry_is_read_and_its_errors_are_located() {
    let ok = format!(
        "{GOOD}\n[entry]\nurl = \"http://127.0.0.1:80/healthz\"\ncolor_header = \"X-Color\"\n"
    );
    let c = parse(&ok).unwrap();
    let e = c.entry.expect("[entry] is read");
    assert_eq!(
        e.url.as_str(),
        "http://127.0.0.1/healthz",
        "the default port is implied"
    );
    assert_eq!(e.color_header.as_str(), "x-color");
    assert!(parse(GOOD).unwrap().entry.is_none());

    let text = ok.replace("X-Color", "X Color");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "X Color"));
    assert_eq!(key, "entry.color_header");
    assert!(message.contains("not an HTTP header name"), "{message}");

    let text = ok.replace("http://127.0.0.1:80/healthz", "ftp://h/x");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "ftp://"));
    assert_eq!(key, "entry.url");
    assert!(message.contains("expected http or https"), "{message}");

    let text = ok.replace(
        "color_header = \"X-Color\"\n",
        "colour_header = \"X-Color\"\n",
    );
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "colour_header"));
    assert_eq!(key, "entry.colour_header");
    assert!(message.contains("unknown field"), "{message}");

    let text = ok.replace("color_header = \"X-Color\"\n", "");
    let (_, key, message) = invalid(&text);
    assert!(key.starts_with("entry"), "{key}");
    assert!(
        message.contains("missing field `color_header`"),
        "{message}"
    );
}

#[test]
fn bad_duration_is_located() {
    let text = GOOD.replace("health = true", "health = true\ninterval = \"5 parsecs\"");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "parsecs"));
    assert_eq!(key, "probe[1].interval");
    assert!(
        message.contains("expected a number with a unit"),
        "{message}"
    );
}

#[test]
fn rule_that_does_not_parse_is_located() {
    let text = format!(
        "{GOOD}\n[[rule]]\nseverity = \"high\"\nwhen = \"error_rate > fifty\"\nwindow = \"2m\"\n"
    );
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "fifty"));
    assert_eq!(key, "rule[1].when");
    assert!(message.contains("SIGNAL OP VALUE"), "{message}");
}

#[test]
fn missing_color_is_rejected() {
    let text = GOOD.replace("[colors.green]\nbase_url = \"http://127.0.0.1:8082\"\n", "");
    let (_, key, message) = invalid(&text);
    assert_eq!(
        key, "colors.green",
        "the missing key is named, not its sibling"
    );
    assert!(message.contains("missing field `green`"), "{message}");
    let text = GOOD.replace("[colors.blue]\nbase_url = \"http://127.0.0.1:8081\"\n", "");
    let (_, key, _) = invalid(&text);
    assert_eq!(key, "colors.blue");
}

#[test]
fn retention_under_an_hour_is_refused_naming_the_key() {
    let text = GOOD.replace(
        "state_dir = \"state\"\n",
        "state_dir = \"state\"\nretention = \"0s\"\n",
    );
    let (line, key, message) = invalid(&text);
    assert_eq!(key, "daemon.retention");
    assert_eq!(line, line_of(&text, "retention"));
    assert!(message.contains("minimum is 1h"), "{message}");
    let ok = GOOD.replace(
        "state_dir = \"state\"\n",
        "state_dir = \"state\"\nretention = \"1h\"\n",
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn a_missing_key_in_a_table_is_named_with_its_table() {
    let text = GOOD.replace("name = \"healthz\"\n", "");
    let (_, key, message) = invalid(&text);
    assert_eq!(key, "probe[1].name", "{message}");
}

#[test]
fn duplicate_probe_names_are_rejected() {
    let text = format!("{GOOD}\n[[probe]]\nname = \"healthz\"\nkind = \"tcp\"\n");
    let (line, key, message) = invalid(&text);
    assert_eq!(
        line,
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.contains("name = \"healthz\""))
            .nth(1)
            .unwrap()
            .0
            + 1
    );
    assert_eq!(key, "probe[2].name");
    assert!(message.contains("duplicate probe name"), "{message}");
}

#[test]
fn relative_path_without_base_url_is_rejected() {
    let text = GOOD.replace("base_url = \"http://127.0.0.1:8082\"", "");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "[colors.green]"));
    assert_eq!(key, "colors.green.base_url");
    assert!(message.contains("needs a base_url"), "{message}");
}

#[test]
fn access_log_and_unit_probes_parse_with_defaults() {
    let text = format!(
        "{GOOD}\n[[probe]]\nname = \"users\"\nkind = \"access_log\"\nfile = \"/var/log/nginx/access.log\"\n\
             [[probe]]\nname = \"per-color\"\nkind = \"access_log\"\nfile = \"/var/log/nginx/{{color}}.log\"\nformat = \"combined\"\n\
             [[probe]]\nname = \"resources\"\nkind = \"unit\"\nunit = \"beluga@{{color}}.service\"\nmemory_max = \"512M\"\n"
    );
    let c = parse(&text).unwrap();
    let Check::AccessLog(a) = &c.probe("users").unwrap().check else {
        panic!()
    };
    assert_eq!(
        (
            a.format,
            a.color_field.as_deref(),
            a.status_field.as_str(),
            a.latency_field.as_str()
        ),
        (
            AccessLogFormat::Json,
            Some("upstream_addr"),
            "status",
            "request_time"
        )
    );
    let Check::AccessLog(a) = &c.probe("per-color").unwrap().check else {
        panic!()
    };
    assert_eq!(
        (a.format, a.color_field.as_deref()),
        (AccessLogFormat::Combined, None)
    );
    let p = c.probe("resources").unwrap();
    assert_eq!(p.scope, Scope::PerColor);
    let Check::Unit(u) = &p.check else { panic!() };
    assert_eq!(u.memory_max, Some(MemoryLimit::Bytes(512 << 20)));
    // The errors signal and the access log rules.
    assert!(
        c.rules
            .iter()
            .any(|r| r.name == "critical: error_rate >= 100% over 400ms"
                && r.probes == ["users", "per-color"])
    );
    let text = format!(
        "{text}\n[[rule]]\nseverity = \"high\"\nwhen = \"errors >= 20\"\nwindow = \"1m\"\nprobes = [\"users\"]\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.rules[0].min_samples, 1);
    assert_eq!(c.rules[0].condition.signal, Signal::Errors);
}

#[test]
fn bad_access_log_and_unit_keys_are_located() {
    for (probe, key, needle) in [
        (
            "kind = \"access_log\"\nfile = \"/x/a.log\"\nformat = \"combined\"",
            "file",
            "put {color} in `file`",
        ),
        (
            "kind = \"access_log\"\nfile = \"/x/{color}.log\"\ncolor_field = \"up\"",
            "color_field",
            "already names the color",
        ),
        (
            "kind = \"access_log\"\nfile = \"/x/{color}.log\"\nformat = \"combined\"\nstatus_field = \"s\"",
            "status_field",
            "fixed positions",
        ),
        ("kind = \"access_log\"", "file", "needs `file`"),
        ("kind = \"unit\"", "unit", "exactly one of `unit`"),
        (
            "kind = \"unit\"\nunit = \"a\"\nmemory_max = \"150%\"",
            "memory_max",
            "percentage",
        ),
        (
            "kind = \"unit\"\nunit = \"a\"\npattern = \"x\"",
            "pattern",
            "does not apply to kind = \"unit\"",
        ),
    ] {
        let text = format!("{GOOD}\n[[probe]]\nname = \"new\"\n{probe}\n");
        let (line, k, message) = invalid(&text);
        assert_eq!(k, format!("probe[2].{key}"), "{probe}: {message}");
        assert!(message.contains(needle), "{probe}: {message}");
        assert!(
            line + 1 >= line_of(&text, "name = \"new\""),
            "{probe}: line {line}"
        );
    }
}

#[test]
fn key_that_does_not_apply_to_the_kind_is_rejected() {
    let text = GOOD.replace("health = true", "health = true\npattern = \"ERROR\"");
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "pattern ="));
    assert_eq!(key, "probe[1].pattern");
    assert!(
        message.contains("does not apply to kind = \"http\""),
        "{message}"
    );
}

#[test]
fn unknown_placeholder_is_rejected() {
    let text = GOOD.replace("\"{to}\"", "\"{target}\"");
    let (_, key, message) = invalid(&text);
    assert_eq!(key, "rollback.command");
    assert!(
        message.contains("unknown placeholder {target}"),
        "{message}"
    );
}

#[test]
fn slow_critical_rule_is_rejected() {
    let text = format!(
        "{GOOD}\n[[rule]]\nseverity = \"critical\"\nwhen = \"error_rate > 90%\"\nwindow = \"10m\"\nmin_samples = 3\n"
    );
    let (line, _, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "[[rule]]"));
    assert!(message.contains("must be acted on within 2m"), "{message}");
}

#[test]
fn unreachable_min_samples_is_rejected_for_high() {
    let text = format!(
        "{GOOD}\n[[rule]]\nseverity = \"high\"\nwhen = \"error_rate > 50%\"\nwindow = \"30s\"\nmin_samples = 50\n"
    );
    let (_, _, message) = invalid(&text);
    assert!(message.contains("can never fire"), "{message}");
}

#[test]
fn secrets_resolve_and_never_show_in_debug() {
    // SAFETY (edition 2024 marks set_var unsafe): this test is the only
    // user of this variable name.
    unsafe { std::env::set_var("ROLLBACKD_TEST_HOOK", "https://hooks.example/s3cr3t-token") };
    let text = format!(
        "{GOOD}\n[[notify]]\nkind = \"webhook\"\nurl = \"env:ROLLBACKD_TEST_HOOK\"\nformat = \"slack\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.notify[0].url.expose(),
        Ok("https://hooks.example/s3cr3t-token")
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr3t"), "secret leaked into Debug");
    assert!(debug.contains("env:ROLLBACKD_TEST_HOOK"));
}

#[test]
fn rollback_action_requires_a_command() {
    let text = GOOD.replace("[rollback]\ncommand = [\"/bin/true\", \"{to}\"]\n", "");
    let (_, key, message) = invalid(&text);
    assert_eq!(key, "rollback.command");
    assert!(message.contains("required"), "{message}");
}

#[test]
fn status_specs_accept_codes_classes_and_ranges() {
    let text = GOOD.replace(
        "health = true",
        "health = true\nexpect_status = [200, \"3xx\", \"401-403\"]",
    );
    let c = parse(&text).unwrap();
    let Check::Http(h) = &c.probes[0].check else {
        panic!()
    };
    assert_eq!(h.expect_status, vec![200..=200, 300..=399, 401..=403]);
    let bad = GOOD.replace("health = true", "health = true\nexpect_status = [\"9xx\"]");
    assert!(invalid(&bad).2.contains("invalid status"));
}

#[test]
fn bad_prometheus_selector_is_a_config_error() {
    let text = format!(
        "{GOOD}\n[[probe]]\nname = \"traffic\"\nkind = \"prometheus\"\npath = \"/metrics\"\nrequests = \"http_requests_total\"\nerrors = 'http_requests_total{{code=~\"5..\"'\n"
    );
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "errors ="));
    assert_eq!(key, "probe[2].errors");
    assert!(message.contains("invalid selector"), "{message}");
    let good = text.replace("\"5..\"'", "\"5..\"}'");
    assert!(parse(&good).is_ok());
}

#[test]
fn default_matrix_that_probes_too_slowly_is_rejected_at_the_probe() {
    let text = GOOD.replace(
        "health = true",
        "health = true\ninterval = \"90s\"\nconfirm_interval = \"off\"",
    );
    let (line, key, message) = invalid(&text);
    assert_eq!(line, line_of(&text, "interval = \"90s\""));
    assert_eq!(key, "probe[1].interval");
    assert!(
        message.contains("must be acted on within 2m") && message.contains("default matrix"),
        "{message}"
    );
}

#[test]
fn fast_confirm_shortens_the_detection_time() {
    let text = GOOD.replace(
        "health = true",
        "health = true\nconfirm_interval = \"500ms\"",
    );
    let c = parse(&text).unwrap();
    // 5s + 2s timeout, the four confirms started 0.5s apart.
    assert_eq!(
        c.detection_time(&c.rules[0]),
        Detection::Within(Duration::from_secs(9))
    );
    let off =
        parse(&GOOD.replace("health = true", "health = true\nconfirm_interval = \"off\"")).unwrap();
    assert_eq!(off.probes[0].confirm_interval, None);
    // Five runs on the interval, the last one hung for its timeout.
    assert_eq!(
        off.detection_time(&off.rules[0]),
        Detection::Within(Duration::from_secs(27))
    );
    // A short interval bounds the default confirm pace.
    let short = parse(&GOOD.replace(
        "health = true",
        "health = true\ninterval = \"150ms\"\ntimeout = \"100ms\"",
    ))
    .unwrap();
    assert_eq!(
        short.probes[0].confirm_interval,
        Some(Duration::from_millis(150))
    );
    let bad = GOOD.replace(
        "health = true",
        "health = true\nconfirm_interval = \"soon\"",
    );
    let (line, key, message) = invalid(&bad);
    assert_eq!(line, line_of(&bad, "confirm_interval"));
    assert_eq!(key, "probe[1].confirm_interval");
    assert!(message.contains("or \"off\""), "{message}");
}

#[test]
fn assumed_noise_is_a_percentage() {
    let text = GOOD.replace("[daemon]\n", "[daemon]\nassumed_noise = \"0.5%\"\n");
    assert_eq!(parse(&text).unwrap().daemon.assumed_noise, 0.005);
    for bad in ["\"0%\"", "\"100%\"", "\"2\"", "\"lots\""] {
        let text = GOOD.replace("[daemon]\n", &format!("[daemon]\nassumed_noise = {bad}\n"));
        let (line, key, message) = invalid(&text);
        assert_eq!(line, line_of(&text, "assumed_noise"));
        assert_eq!(key, "daemon.assumed_noise");
        assert!(message.contains("like \"2%\""), "{message}");
    }
}

#[test]
fn a_critical_rule_that_fires_on_noise_is_warned_about() {
    let three = GOOD.replace(
            "[rollback]",
            "[[rule]]\nseverity = \"critical\"\nwhen = \"health_failures >= 3\"\nwindow = \"10m\"\n\n[rollback]",
        );
    let c = parse(&three).unwrap();
    // 5s interval, 3 in a row at 2%: 6.3 million ticks a year x 8e-6.
    let per_year = c.noise_firings(&c.rules[0]).unwrap();
    assert!((49.0..52.0).contains(&per_year), "{per_year}");
    let w = c
        .warnings
        .iter()
        .find(|w| w.contains("would fire on noise"))
        .expect("warned");
    assert!(
        w.contains("about 50 times a year at 2% independent failures"),
        "{w}"
    );
    // The default (5 in a row) is quiet; so is 3 in a row on two health
    // probes (the rule takes the smallest streak).
    let quiet = |text: &str| {
        !parse(text)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("would fire on noise"))
    };
    assert!(quiet(GOOD));
    assert!(quiet(&three.replace(
        "[[rule]]",
        "[[probe]]\nname = \"ready\"\nkind = \"http\"\npath = \"/ready\"\nhealth = true\n\n[[rule]]"
    )));
    // A noisier assumption makes the default speak up too.
    let noisy = GOOD.replace("[daemon]\n", "[daemon]\nassumed_noise = \"20%\"\n");
    assert!(!quiet(&noisy));
}

#[test]
fn secrets_written_inline_are_warned_about_without_showing_them() {
    let text = GOOD.replace(
        "health = true",
        "health = true\nheaders = { Authorization = \"Bearer hunter2\", Accept = \"text/plain\" }",
    ) + "\n[[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example/hunter3\"\n";
    let c = parse(&text).unwrap();
    let all = c.warnings.join("\n");
    assert!(
        all.contains("header Authorization is written in the file"),
        "{all}"
    );
    assert!(!all.contains("header Accept"), "{all}");
    assert!(
        all.contains("[[notify]] url is written in the file"),
        "{all}"
    );
    assert!(
        !all.contains("hunter"),
        "a warning never shows the value: {all}"
    );
}

#[test]
fn a_missing_table_is_named() {
    let text = GOOD.replace("[service]\nname = \"beluga\"\n", "");
    let (_, key, message) = invalid(&text);
    assert_eq!(key, "service");
    assert!(message.contains("missing field `service`"), "{message}");
}

#[test]
fn syntax_error_is_located() {
    let text = GOOD.replace("kind = \"http\"", "kind = \"http");
    let (line, _, _) = invalid(&text);
    assert_eq!(line, line_of(&text, "kind = \"http"));
}

#[test]
fn a_shared_database_is_a_postgres_url_whose_value_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    let with = |value: &str| {
        std::fs::write(&file, value).unwrap();
        GOOD.replace(
            "[daemon]\n",
            &format!(
                "[daemon]\ndatabase = \"file:{}\"\nhost = \"eu-1\"\n",
                file.display()
            ),
        )
    };
    let c = parse(&with("postgres://rollbackd:hunter2@db.internal/fleet\n")).unwrap();
    assert_eq!(c.daemon.host, "eu-1");
    let db = c.daemon.database.as_ref().expect("a database");
    assert_eq!(
        db.expose(),
        Ok("postgres://rollbackd:hunter2@db.internal/fleet")
    );
    assert!(!format!("{c:?}").contains("hunter2"), "Debug shows the URL");
    // Not PostgreSQL: an error naming the key and the reference, not the value.
    let text = with("mysql://root:hunter2@db/fleet");
    let (line, key, message) = invalid(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_of(&text, "database"), "daemon.database")
    );
    assert!(
        message.contains("does not hold a postgres:// URL"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    // Written in the file: accepted, with a warning.
    let inline = GOOD.replace(
        "[daemon]\n",
        "[daemon]\ndatabase = \"postgres://rollbackd:hunter2@db/fleet\"\n",
    );
    let c = parse(&inline).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("database is written in the file"))
    );
    assert!(!c.warnings.join("\n").contains("hunter2"));
    // No database: the local file alone; the host defaults to the hostname.
    let c = parse(GOOD).unwrap();
    assert!(c.daemon.database.is_none() && !c.daemon.host.is_empty());
}

#[test]
fn a_host_name_with_spaces_or_slashes_is_refused_at_its_key() {
    let text = GOOD.replace("[daemon]\n", "[daemon]\nhost = \"eu 1/a\"\n");
    let (line, key, message) = invalid(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_of(&text, "host"), "daemon.host")
    );
    assert!(message.contains("is not a host name"), "{message}");
}
