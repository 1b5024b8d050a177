//! Rounds: the same capacity runs repeated and told apart from the
//! machine's drift.
//!
//! On a shared machine the same traffic can cost a server 10% more of its
//! core from one half hour to the next, so one capacity search per target,
//! each taken minutes after the other, compares the machine's moods as much
//! as the servers. `scripts/bench-load.sh rounds` instead runs every size on
//! every target, target after target, on a fresh server each time, and
//! repeats the whole in several rounds. This module reads those runs' JSON
//! results back: per target and size, how many rounds passed. A size passes
//! for a target when most of its rounds did; the target's capacity is the
//! largest size that passed with every size below it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::capacity::{CapacityResult, Step, StepBy};
use crate::target::TargetKind;

/// What the rounds of one target measured at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeRounds {
    pub rooms: u32,
    pub runs: u32,
    pub passed: u32,
    /// Op delivery p99 of each round, in the order the results were given.
    pub op_p99_ms: Vec<f64>,
    pub median_op_p99_ms: f64,
    /// The server's mean CPU, median over the rounds, % of one core.
    pub median_server_cpu_pct: Option<f64>,
    /// Ops lost over all rounds.
    pub ops_lost: u64,
}

impl SizeRounds {
    /// Most rounds passed.
    pub fn passes(&self) -> bool {
        self.passed * 2 > self.runs
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRounds {
    pub target: TargetKind,
    /// The largest size that passed, with every size below it.
    pub capacity: Option<u32>,
    /// It passed every size run: the capacity is only a lower bound.
    pub passed_every_size: bool,
    pub sizes: Vec<SizeRounds>,
    /// Per size, the round with the median op p99 (for the plot).
    #[serde(skip)]
    median_steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundsSummary {
    pub scenario: String,
    pub step_by: StepBy,
    pub p99_bound_ms: f64,
    pub targets: Vec<TargetRounds>,
}

/// Groups the steps of `results` by target and size and sums each group
/// up; a result may hold one step (one round at one size) or several.
pub fn summarize(results: &[CapacityResult]) -> RoundsSummary {
    let first = results.first();
    let p99_bound_ms = first.map_or(50.0, |c| c.p99_bound_ms);
    let step_by = first.map_or(StepBy::Rooms, |c| c.step_by);
    let scenario = results
        .iter()
        .flat_map(|c| c.steps.first())
        .map(|s| s.result.scenario.name().to_owned())
        .next()
        .unwrap_or_default();
    // Targets in one order whatever the files' (ours first, as in every
    // plot of docs/BENCHMARKS.md), sizes ascending, rounds as given.
    let mut cells: BTreeMap<(TargetKind, u32), Vec<&Step>> = BTreeMap::new();
    for step in results.iter().flat_map(|c| &c.steps) {
        cells
            .entry((step.result.target, step.rooms))
            .or_default()
            .push(step);
    }
    let mut targets: Vec<TargetRounds> = Vec::new();
    for ((target, rooms), steps) in cells {
        let mut by_p99: Vec<&Step> = steps.clone();
        by_p99.sort_by(|a, b| {
            a.result
                .latency
                .op
                .p99_ms
                .total_cmp(&b.result.latency.op.p99_ms)
        });
        let median = by_p99[by_p99.len() / 2];
        let mut cpus: Vec<f64> = steps
            .iter()
            .filter_map(|s| s.result.server.as_ref().map(|p| p.cpu_pct_mean))
            .collect();
        cpus.sort_by(f64::total_cmp);
        let size = SizeRounds {
            rooms,
            runs: steps.len() as u32,
            passed: steps.iter().filter(|s| s.passed).count() as u32,
            op_p99_ms: steps.iter().map(|s| s.result.latency.op.p99_ms).collect(),
            median_op_p99_ms: median.result.latency.op.p99_ms,
            median_server_cpu_pct: cpus.get(cpus.len() / 2).copied(),
            ops_lost: steps.iter().map(|s| s.result.counters.ops_lost).sum(),
        };
        match targets.last_mut() {
            Some(last) if last.target == target => {
                last.sizes.push(size);
                last.median_steps.push(median.clone());
            }
            _ => targets.push(TargetRounds {
                target,
                capacity: None,
                passed_every_size: false,
                sizes: vec![size],
                median_steps: vec![median.clone()],
            }),
        }
    }
    for target in &mut targets {
        target.capacity = target
            .sizes
            .iter()
            .take_while(|s| s.passes())
            .last()
            .map(|s| s.rooms);
        target.passed_every_size = target.sizes.iter().all(SizeRounds::passes);
    }
    RoundsSummary {
        scenario,
        step_by,
        p99_bound_ms,
        targets,
    }
}

impl RoundsSummary {
    /// Each target's median rounds as a capacity curve, for
    /// [`crate::report::capacity_svg`].
    pub fn median_curves(&self) -> Vec<(&'static str, CapacityResult)> {
        self.targets
            .iter()
            .map(|t| {
                (
                    t.target.name(),
                    CapacityResult {
                        step_by: self.step_by,
                        p99_bound_ms: self.p99_bound_ms,
                        capacity: t.capacity,
                        steps: t.median_steps.clone(),
                    },
                )
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let rounds = self
            .targets
            .iter()
            .flat_map(|t| &t.sizes)
            .map(|s| s.runs)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "### {}: {rounds} interleaved rounds (p99 bound {} ms)\n",
            self.scenario, self.p99_bound_ms
        );
        let unit = self.step_by.unit();
        let _ = writeln!(
            out,
            "| {unit} | target | rounds passed | op p99 per round (ms) | median op p99 | median server CPU | ops lost |\n|---|---|---|---|---|---|---|"
        );
        let sizes: BTreeSet<u32> = self
            .targets
            .iter()
            .flat_map(|t| &t.sizes)
            .map(|s| s.rooms)
            .collect();
        for rooms in sizes {
            for t in &self.targets {
                let Some(s) = t.sizes.iter().find(|s| s.rooms == rooms) else {
                    continue;
                };
                let p99s: Vec<String> = s.op_p99_ms.iter().map(|p| format!("{p:.1}")).collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} of {} | {} | {:.1} | {} | {} |",
                    rooms,
                    t.target.name(),
                    s.passed,
                    s.runs,
                    p99s.join(", "),
                    s.median_op_p99_ms,
                    s.median_server_cpu_pct
                        .map_or("-".to_owned(), |c| format!("{c:.0}%")),
                    s.ops_lost,
                );
            }
        }
        out.push('\n');
        for t in &self.targets {
            let capacity = match (t.capacity, t.passed_every_size) {
                (None, _) => "below the smallest size".to_owned(),
                (Some(c), false) => c.to_string(),
                (Some(c), true) => format!("≥ {c} (passed every size)"),
            };
            let _ = writeln!(out, "- {}: capacity **{capacity}**", t.target.name());
        }
        let find = |kind| self.targets.iter().find(|t| t.target == kind);
        if let Some(ours) = find(TargetKind::Collab) {
            for theirs in [TargetKind::Centrifugo, TargetKind::Relay]
                .into_iter()
                .filter_map(find)
            {
                if let Some(ratio) = ratio(ours, theirs) {
                    let _ = writeln!(out, "- collab against {}: {ratio}", theirs.target.name());
                }
            }
        }
        out
    }
}

/// `ours` / `theirs` capacity, with "≥" or "≤" where a capacity is only a
/// lower bound; `None` where nothing can be said.
fn ratio(ours: &TargetRounds, theirs: &TargetRounds) -> Option<String> {
    let value = f64::from(ours.capacity?) / f64::from(theirs.capacity?);
    match (ours.passed_every_size, theirs.passed_every_size) {
        (false, false) => Some(format!("{value:.2}×")),
        (true, false) => Some(format!("≥ {value:.2}×")),
        (false, true) => Some(format!("≤ {value:.2}×")),
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests;
