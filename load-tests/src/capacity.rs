//! Capacity: run a scenario at growing sizes until p99 of op delivery
//! passes a bound or anything is lost; the last size under it is the
//! capacity.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::run::{RunOptions, RunResult, run};

/// One step of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub rooms: u32,
    pub passed: bool,
    pub result: RunResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityResult {
    pub p99_bound_ms: f64,
    /// The largest passing size (rooms), if any step passed.
    pub capacity: Option<u32>,
    pub steps: Vec<Step>,
}

/// Whether a run is within the bound: p99 under it and a clean run.
pub fn passes(result: &RunResult, p99_bound_ms: f64) -> bool {
    result.clean && result.latency.op.count > 0 && result.latency.op.p99_ms < p99_bound_ms
}

/// Runs `base` at each size of `steps` (ascending) until one fails.
pub async fn search(base: &RunOptions, steps: &[u32], p99_bound_ms: f64) -> Result<CapacityResult> {
    let mut out = CapacityResult {
        p99_bound_ms,
        capacity: None,
        steps: Vec::new(),
    };
    for &rooms in steps {
        let mut opts = base.clone();
        opts.scenario = base.scenario.with_rooms(rooms);
        let result = run(&opts).await?;
        let passed = passes(&result, p99_bound_ms);
        if base.progress {
            eprintln!(
                "step {rooms}: op p99 {:.1} ms, lost {}, errors {} → {}",
                result.latency.op.p99_ms,
                result.counters.ops_lost,
                result.counters.error_count(),
                if passed { "pass" } else { "FAIL" }
            );
        }
        out.steps.push(Step {
            rooms,
            passed,
            result,
        });
        if !passed {
            break;
        }
        out.capacity = Some(rooms);
    }
    Ok(out)
}
