//! Results as Markdown tables and SVG line charts.

use std::fmt::Write as _;

use crate::capacity::{CapacityResult, StepBy};
use crate::latejoin::LateJoinResult;
use crate::run::RunResult;
use crate::stats::Latency;

fn n(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lat_row(out: &mut String, name: &str, l: &Latency) {
    if l.count == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        n(l.count),
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms
    );
}

/// A Markdown summary of one run.
pub fn run_markdown(r: &RunResult) -> String {
    let mut out = String::new();
    let c = &r.counters;
    let warmup = if r.warmup_s > 0.0 {
        format!(" after {:.0} s of warm-up", r.warmup_s)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "### {} on {}: {} rooms, {} clients, {:.0} s{warmup}\n",
        r.scenario.name(),
        r.target.name(),
        n(u64::from(r.rooms)),
        n(c.clients),
        r.duration_s
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| ops offered / sent | {:.0}/s / {:.0}/s |",
        r.offered_ops_per_sec, r.sent_ops_per_sec
    );
    let _ = writeln!(
        out,
        "| op deliveries | {} of {} expected ({:.0}/s); lost {}, duplicated or reordered {}, seq errors {} |",
        n(c.ops_delivered),
        n(c.ops_expected),
        r.delivered_ops_per_sec,
        n(c.ops_lost),
        n(c.ops_duplicated_or_reordered),
        n(c.seq_errors)
    );
    let _ = writeln!(
        out,
        "| acks | {} of {} sent ({} missing) |",
        n(c.acked),
        n(c.ops_sent),
        n(c.ack_missing)
    );
    if c.cursors_sent > 0 {
        let _ = writeln!(
            out,
            "| cursors | {} sent, {} delivered of {} without coalescing ({:.0}/s) |",
            n(c.cursors_sent),
            n(c.cursors_delivered),
            n(c.cursors_expected),
            r.delivered_cursors_per_sec
        );
    }
    let _ = writeln!(
        out,
        "| clients | {} connected and joined, {} failed, {} disconnected, {} alive at the end |",
        n(c.clients - c.connect_failed - c.join_failed),
        n(c.connect_failed + c.join_failed),
        n(c.disconnected),
        n(c.alive_at_end)
    );
    let errors: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(
        out,
        "| errors | {} |",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
    if let Some(s) = &r.server {
        let _ = writeln!(
            out,
            "| server | CPU {:.0}% mean, {:.0}% max (of one core); RSS {:.1} → {:.1} MiB (max {:.1}) |",
            s.cpu_pct_mean,
            s.cpu_pct_max,
            s.rss_start_bytes as f64 / 1048576.0,
            s.rss_end_bytes as f64 / 1048576.0,
            s.rss_max_bytes as f64 / 1048576.0
        );
    }
    for w in &r.watched {
        let s = &w.stats;
        let _ = writeln!(
            out,
            "| {} | CPU {:.0}% mean, {:.0}% max (of one core); RSS {:.1} → {:.1} MiB |",
            w.name,
            s.cpu_pct_mean,
            s.cpu_pct_max,
            s.rss_start_bytes as f64 / 1048576.0,
            s.rss_end_bytes as f64 / 1048576.0,
        );
    }
    if r.watched.len() > 1 {
        let cpu: f64 = r.watched.iter().map(|w| w.stats.cpu_pct_mean).sum();
        let _ = writeln!(
            out,
            "| watched processes together | CPU {cpu:.0}% of one core |"
        );
    }
    if let (Some(before), Some(per)) = (r.server_rss_before_bytes, r.server_rss_per_client_bytes) {
        let _ = writeln!(
            out,
            "| server memory per client | {:.1} KiB ((RSS at the end − {:.1} MiB before connecting) / clients) |",
            per / 1024.0,
            before as f64 / 1048576.0
        );
    }
    let _ = writeln!(
        out,
        "| generator | CPU {:.0}% of one core, {} worker(s) |",
        r.generator_cpu_pct, r.workers
    );
    let _ = writeln!(
        out,
        "| verdict | {} |\n",
        if r.clean {
            "clean: nothing lost, duplicated, reordered or refused"
        } else {
            "NOT clean"
        }
    );
    let _ = writeln!(
        out,
        "| latency (ms) | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
    );
    lat_row(&mut out, "op, end to end", &r.latency.op);
    lat_row(&mut out, "ack", &r.latency.ack);
    lat_row(&mut out, "cursor", &r.latency.cursor);
    lat_row(&mut out, "connect", &r.latency.connect);
    lat_row(&mut out, "join", &r.latency.join);
    lat_row(&mut out, "generator send lag", &r.latency.send_lag);
    out
}

pub fn capacity_markdown(c: &CapacityResult) -> String {
    let mut out = String::new();
    let Some(first) = c.steps.first() else {
        return out;
    };
    let _ = writeln!(
        out,
        "### capacity: {} on {} (p99 bound {} ms)\n",
        first.result.scenario.name(),
        first.result.target.name(),
        c.p99_bound_ms
    );
    let unit = c.step_by.unit();
    let _ = writeln!(
        out,
        "| {unit} | clients | ops sent/s | deliveries/s | cursors/s | op p50 | op p99 | ack p99 | lost | errors | server CPU | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &c.steps {
        let r = &s.result;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            n(u64::from(s.rooms)),
            n(r.counters.clients),
            r.sent_ops_per_sec,
            r.delivered_ops_per_sec,
            r.delivered_cursors_per_sec,
            r.latency.op.p50_ms,
            r.latency.op.p99_ms,
            r.latency.ack.p99_ms,
            n(r.counters.ops_lost),
            n(r.counters.error_count()),
            r.server
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{:.0}%", s.cpu_pct_mean)),
            match (s.passed, s.generator_late) {
                (true, _) => "pass",
                (false, false) => "fail",
                (false, true) => "fail (generator late)",
            }
        );
    }
    let _ = writeln!(
        out,
        "\ncapacity: **{}**",
        c.capacity
            .map_or("below the first step".to_owned(), |r| match c.step_by {
                StepBy::Rooms => format!("{} rooms", n(u64::from(r))),
                StepBy::RatePercent => format!("{r}% of the scenario's rates"),
            })
    );
    out
}

pub fn latejoin_markdown(r: &LateJoinResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### late-join: a board of {} ops (filled in {:.1} s)\n",
        n(r.ops),
        r.fill_secs
    );
    let _ = writeln!(
        out,
        "| newcomer | joined (ms) | full state (ms) | bytes | strokes | points |\n|---|---|---|---|---|---|"
    );
    for (i, j) in r.joins.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {} | {} |",
            i + 1,
            j.joined_ms,
            j.state_ms,
            n(j.bytes as u64),
            n(j.strokes as u64),
            n(j.points as u64)
        );
    }
    let _ = writeln!(
        out,
        "\nstate complete in every join: {}",
        if r.clean { "yes" } else { "NO" }
    );
    out
}

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A plain SVG line chart (no fonts or libraries needed to view it).
pub fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    bound: Option<f64>,
) -> String {
    let (w, h) = (720.0, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = nice(y1.max(bound.unwrap_or(0.0)).max(1e-3));
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - y / y1 * (h - top - bottom);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let y = y1 * f64::from(i) / 5.0;
        let (x2, yy, tx, ty, label) = (w - right, py(y), left - 6.0, py(y) + 4.0, fmt_num(y));
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{x2}" y1="{yy}" y2="{yy}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{label}</text>"##
        );
        let x = x0 + (x1 - x0) * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - bottom + 18.0,
            fmt_num(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 10.0,
        esc(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    if let Some(b) = bound {
        let (x2, yy) = (w - right, py(b));
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{x2}" y1="{yy}" y2="{yy}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{}" text-anchor="end" fill="#666">bound {}</text>"##,
            x2 - 4.0,
            yy - 4.0,
            fmt_num(b)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y.min(y1))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.color,
            path.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                px(x),
                py(y.min(y1)),
                s.color
            );
        }
        let ly = top + 4.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            left + 12.0,
            ly,
            s.color,
            left + 30.0,
            ly + 5.0,
            esc(s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Latency over time of one run.
pub fn timeline_svg(r: &RunResult) -> String {
    let p = |f: fn(&crate::run::TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|t| (t.second as f64, f(t))).collect()
    };
    svg_chart(
        &format!(
            "{} on {}: {} rooms, op delivery latency per second",
            r.scenario.name(),
            r.target.name(),
            r.rooms
        ),
        "second of the run",
        "ms",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: p(|t| t.op_p50_ms),
            },
            Series {
                name: "p99",
                color: "#d62728",
                points: p(|t| t.op_p99_ms),
            },
            Series {
                name: "ack p99",
                color: "#2ca02c",
                points: p(|t| t.ack_p99_ms),
            },
        ],
        None,
    )
}

/// p99 against size, one line per target.
pub fn capacity_svg(title: &str, curves: &[(&str, &CapacityResult)]) -> String {
    let bound = curves.first().map(|(_, c)| c.p99_bound_ms);
    const COLORS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let series: Vec<Series<'_>> = curves
        .iter()
        .enumerate()
        .map(|(i, (name, c))| Series {
            name,
            color: COLORS[i % COLORS.len()],
            points: c
                .steps
                .iter()
                .map(|s| (f64::from(s.rooms), s.result.latency.op.p99_ms))
                .collect(),
        })
        .collect();
    let x = match curves.first().map(|(_, c)| c.step_by) {
        Some(StepBy::RatePercent) => "rate, % of the scenario's",
        _ => "rooms",
    };
    svg_chart(title, x, "op delivery p99 (ms)", &series, bound)
}

fn nice(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if x <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.round() {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
