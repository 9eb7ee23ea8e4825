//! Benchmark of the decision matrix: verdicts per second for 100 probes x 2
//! colors, fed one sample per probe per color per second and evaluated four
//! times a second (the daemon's pace), over a simulated hour.
//!
//! Owns nothing but this measurement; it uses only `Engine`'s public
//! interface. Run it in release mode:
//!
//! ```text
//! cargo bench --bench matrix
//! ```
//!
//! Figures are written down in `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use rollbackd::config::Config;
use rollbackd::matrix::Engine;
use rollbackd::model::{Color, Sample};

const PROBES: usize = 100;
const HEALTH_PROBES: usize = 10;
/// Simulated duration of each run.
const SIMULATED_S: i64 = 3600;
/// The daemon evaluates both colors every 250 ms.
const EVAL_EVERY_MS: i64 = 250;

const DEFAULT_MATRIX_PLUS_P95: &str = r#"
[[rule]]
severity = "critical"
when = "health_failures >= 3"
window = "10m"
min_samples = 3
[[rule]]
severity = "critical"
when = "error_rate >= 100%"
window = "1m"
min_samples = 5
[[rule]]
severity = "high"
when = "error_rate > 50%"
window = "2m"
[[rule]]
severity = "high"
when = "latency_avg > 5000ms"
window = "5m"
[[rule]]
severity = "high"
when = "degradation > 50%"
window = "5m"
[[rule]]
severity = "medium"
when = "error_rate > 10%"
window = "5m"
[[rule]]
severity = "medium"
when = "latency_avg > 2000ms"
window = "5m"
[[rule]]
severity = "low"
when = "error_rate > 2%"
window = "15m"
min_samples = 20
[[rule]]
severity = "low"
when = "latency_avg > 1000ms"
window = "15m"
min_samples = 20
[[rule]]
severity = "high"
when = "latency_p95 > 3000ms"
window = "5m"
"#;

fn config(extra_rules: &str) -> Config {
    let mut text = String::from(
        "[service]\nname = \"bench\"\n\
         [colors.blue]\nbase_url = \"http://127.0.0.1:1\"\n\
         [colors.green]\nbase_url = \"http://127.0.0.1:2\"\n\
         [rollback]\ncommand = [\"/bin/true\"]\n",
    );
    for i in 0..PROBES {
        let _ = write!(
            text,
            "[[probe]]\nname = \"p{i}\"\nkind = \"http\"\npath = \"/p{i}\"\n\
             interval = \"1s\"\ntimeout = \"500ms\"\nhealth = {}\n",
            i < HEALTH_PROBES
        );
    }
    text.push_str(extra_rules);
    match Config::parse(Path::new("/bench.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

/// A cheap deterministic stream: 1% failures, latency 20..220 ms.
fn sample(at_ms: i64, probe: &str, color: Color, seq: u64) -> Sample {
    let h = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let ok = h % 100 != 0;
    Sample::answer(at_ms, probe, Some(color), ok, 20.0 + (h % 200) as f64)
}

struct Figures {
    verdicts: u64,
    evaluate: Duration,
    samples: u64,
    observe: Duration,
}

fn run(config: &Config) -> Figures {
    let mut engine = Engine::new(config);
    let names: Vec<String> = (0..PROBES).map(|i| format!("p{i}")).collect();
    let mut f = Figures {
        verdicts: 0,
        evaluate: Duration::ZERO,
        samples: 0,
        observe: Duration::ZERO,
    };
    let mut seq = 0u64;
    let start_ms = 1_700_000_000_000i64;
    let mut t = start_ms;
    while t < start_ms + SIMULATED_S * 1000 {
        if (t - start_ms) % 1000 == 0 {
            // Build outside the timed part: only `observe` is measured.
            let batch: Vec<Sample> = names
                .iter()
                .enumerate()
                .flat_map(|(i, name)| {
                    // Probes spread over the second, as the daemon's jitter does.
                    let at = t + (i as i64 * 7) % 1000;
                    Color::ALL.map(|c| {
                        seq += 1;
                        sample(at, name, c, seq)
                    })
                })
                .collect();
            let began = Instant::now();
            for s in &batch {
                engine.observe(s);
            }
            f.observe += began.elapsed();
            f.samples += batch.len() as u64;
        }
        let began = Instant::now();
        for color in Color::ALL {
            f.verdicts += black_box(engine.evaluate(t, color)).len() as u64;
        }
        f.evaluate += began.elapsed();
        t += EVAL_EVERY_MS;
    }
    f
}

fn report(name: &str, config: &Config) {
    // One warm-up run, then the measured one.
    let _ = run(config);
    let f = run(config);
    println!(
        "{name}: {} rules; {} verdicts in {:.3} s = {:.0} verdicts/s ({:.2} us per evaluation of one color); \
         {} samples observed in {:.3} s = {:.0} samples/s",
        config.rules.len(),
        f.verdicts,
        f.evaluate.as_secs_f64(),
        f.verdicts as f64 / f.evaluate.as_secs_f64(),
        f.evaluate.as_secs_f64() * 1e6 / (f.verdicts as f64 / config.rules.len() as f64),
        f.samples,
        f.observe.as_secs_f64(),
        f.samples as f64 / f.observe.as_secs_f64(),
    );
}

fn main() {
    println!(
        "{PROBES} probes ({HEALTH_PROBES} health) x 2 colors, 1 sample per probe per color per second, \
         both colors evaluated every {EVAL_EVERY_MS} ms, {SIMULATED_S} s simulated"
    );
    report("default matrix", &config(""));
    report(
        "default matrix + latency_p95",
        &config(DEFAULT_MATRIX_PLUS_P95),
    );
}
