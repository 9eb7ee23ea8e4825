//! Degradation baselines: which earlier deployment's samples a color's
//! current deployment is compared with (`baseline_sources`, the one
//! selector the daemon and `replay` use), and the baseline they make.

use std::collections::HashMap;

use serde::Serialize;

use super::point;
use super::window::Totals;
use crate::model::{Color, Millis, Sample};

/// A probe's behaviour under the previous deployment, for `degradation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Baseline {
    /// Average latency, ms.
    pub latency_ms: Option<f64>,
    /// Errors over requests, %.
    pub error_rate: Option<f64>,
}

impl Baseline {
    /// The baseline of one probe from its samples under the previous
    /// deployment (the caller picks them: which deployment, which period).
    pub fn from_samples<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Baseline {
        let mut t = Totals::default();
        for s in samples {
            t.add(&point(s));
        }
        Baseline {
            latency_ms: t.latency_avg(),
            error_rate: t.error_rate(),
        }
    }
}

/// The previous deployment's baseline per (probe, color of the deployment
/// being judged).
pub type Baselines = HashMap<(String, Color), Baseline>;

/// How far before a deployment its predecessor's samples make its baseline.
pub const BASELINE_SPAN_MS: Millis = 30 * 60 * 1000;

/// A deployment, as baseline selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutover {
    pub id: i64,
    pub color: Color,
    pub at_ms: Millis,
}

/// Where the baseline of one color's current deployment comes from: the
/// samples of `previous` (the deployment recorded just before it, whatever
/// its color) in `[from_ms, until_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineSource {
    pub color: Color,
    pub previous: Cutover,
    pub from_ms: Millis,
    pub until_ms: Millis,
}

/// The baseline sources of the deployments in `current` (per color, its
/// current deployment id), from every deployment recorded (`deployments`,
/// any order). The daemon and `replay` both choose baselines here.
pub fn baseline_sources(
    deployments: &[Cutover],
    current: &HashMap<Color, i64>,
) -> Vec<BaselineSource> {
    let mut out = Vec::new();
    for color in Color::ALL {
        let Some(now) = current
            .get(&color)
            .and_then(|id| deployments.iter().find(|d| d.id == *id))
        else {
            continue;
        };
        let Some(previous) = deployments
            .iter()
            .filter(|d| d.id < now.id)
            .max_by_key(|d| d.id)
        else {
            continue;
        };
        out.push(BaselineSource {
            color,
            previous: *previous,
            from_ms: now.at_ms - BASELINE_SPAN_MS,
            until_ms: now.at_ms,
        });
    }
    out
}

/// The baselines of `sources`, from samples that include (at least) each
/// source's span; others are ignored.
pub fn baselines<'a>(
    sources: &[BaselineSource],
    samples: impl IntoIterator<Item = &'a Sample>,
) -> Baselines {
    let mut by_probe: HashMap<(&str, Color), Vec<&Sample>> = HashMap::new();
    for s in samples {
        for src in sources {
            if s.deployment == Some(src.previous.id)
                && s.at_ms >= src.from_ms
                && s.at_ms < src.until_ms
            {
                by_probe
                    .entry((s.probe.as_str(), src.color))
                    .or_default()
                    .push(s);
            }
        }
    }
    by_probe
        .into_iter()
        .map(|((probe, color), samples)| {
            ((probe.to_owned(), color), Baseline::from_samples(samples))
        })
        .collect()
}
