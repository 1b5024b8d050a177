//! Capacity: run a scenario at growing sizes (or rates) until p99 of op
//! delivery passes a bound or anything is lost; the last step under it is
//! the capacity.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::run::{RunOptions, RunResult, run};

/// What the search steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StepBy {
    /// The number of rooms.
    Rooms,
    /// Every sending rate, in % of the scenario's.
    RatePercent,
}

impl StepBy {
    /// What a step's number counts, for table headers.
    pub fn unit(self) -> &'static str {
        match self {
            StepBy::Rooms => "rooms",
            StepBy::RatePercent => "rate %",
        }
    }
}

/// One step of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Rooms, or the rate in % (see [`CapacityResult::step_by`]).
    pub rooms: u32,
    pub passed: bool,
    /// The generator itself sent late (send lag p99 over half the bound):
    /// the step measured the generator's machine, not the server.
    #[serde(default)]
    pub generator_late: bool,
    pub result: RunResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityResult {
    #[serde(default = "rooms")]
    pub step_by: StepBy,
    pub p99_bound_ms: f64,
    /// The largest passing step, if any passed.
    pub capacity: Option<u32>,
    pub steps: Vec<Step>,
}

fn rooms() -> StepBy {
    StepBy::Rooms
}

/// Whether a run is within the bound: p99 under it and a clean run.
pub fn passes(result: &RunResult, p99_bound_ms: f64) -> bool {
    result.clean && result.latency.op.count > 0 && result.latency.op.p99_ms < p99_bound_ms
}

/// Runs `base` at each size (or rate) of `steps`, ascending, until one
/// fails.
pub async fn search(
    base: &RunOptions,
    step_by: StepBy,
    steps: &[u32],
    p99_bound_ms: f64,
) -> Result<CapacityResult> {
    let mut out = CapacityResult {
        step_by,
        p99_bound_ms,
        capacity: None,
        steps: Vec::new(),
    };
    for &step in steps {
        let mut opts = base.clone();
        opts.scenario = match step_by {
            StepBy::Rooms => base.scenario.with_rooms(step),
            StepBy::RatePercent => base.scenario.with_rate_percent(step),
        };
        let result = run(&opts).await?;
        let passed = passes(&result, p99_bound_ms);
        let generator_late = result.latency.send_lag.p99_ms > p99_bound_ms / 2.0;
        if base.progress {
            eprintln!(
                "step {step}: op p99 {:.1} ms, lost {}, errors {} → {}{}",
                result.latency.op.p99_ms,
                result.counters.ops_lost,
                result.counters.error_count(),
                if passed { "pass" } else { "FAIL" },
                if generator_late {
                    " (the generator sent late: this step measured it, not the server)"
                } else {
                    ""
                }
            );
        }
        out.steps.push(Step {
            rooms: step,
            passed,
            generator_late,
            result,
        });
        if !passed {
            break;
        }
        out.capacity = Some(step);
    }
    Ok(out)
}
