//! CPU time and resident memory of a process, read from `/proc`.

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/*/stat` (`sysconf(_SC_CLK_TCK)`; 100 on
/// every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` (`None`: this process).
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14, 15 (utime, stime) and 24 (rss, pages) of proc(5), here
    // shifted by the two before the name's end.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(ProcSample {
        cpu_secs: (utime + stime) / TICKS_PER_SEC,
        rss_bytes: rss_pages * 4096,
    })
}

/// A process watched over a run: CPU use per interval and memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcStats {
    pub pid: Option<u32>,
    /// Mean CPU use over the measured part, in % of one core.
    pub cpu_pct_mean: f64,
    /// Highest one-second CPU use, % of one core.
    pub cpu_pct_max: f64,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_max_bytes: u64,
    /// `(second, cpu %, rss bytes)` over the run.
    pub timeline: Vec<(u64, f64, u64)>,
}

/// Accumulates samples of one process.
pub struct ProcWatch {
    pid: Option<u32>,
    first: Option<(f64, ProcSample)>,
    last: Option<(f64, ProcSample)>,
    stats: ProcStats,
}

impl ProcWatch {
    pub fn new(pid: Option<u32>) -> ProcWatch {
        ProcWatch {
            pid,
            first: None,
            last: None,
            stats: ProcStats {
                pid,
                ..ProcStats::default()
            },
        }
    }

    /// Takes a sample at `at` seconds since the start.
    pub fn sample(&mut self, at: f64) {
        let Some(s) = sample(self.pid) else { return };
        if let Some((t0, prev)) = self.last {
            let dt = at - t0;
            if dt > 0.0 {
                let pct = (s.cpu_secs - prev.cpu_secs) / dt * 100.0;
                self.stats.cpu_pct_max = self.stats.cpu_pct_max.max(pct);
                self.stats
                    .timeline
                    .push((at.round() as u64, pct, s.rss_bytes));
            }
        }
        if self.first.is_none() {
            self.first = Some((at, s));
            self.stats.rss_start_bytes = s.rss_bytes;
        }
        self.stats.rss_end_bytes = s.rss_bytes;
        self.stats.rss_max_bytes = self.stats.rss_max_bytes.max(s.rss_bytes);
        self.last = Some((at, s));
    }

    pub fn finish(mut self) -> ProcStats {
        if let (Some((t0, a)), Some((t1, b))) = (self.first, self.last)
            && t1 > t0
        {
            self.stats.cpu_pct_mean = (b.cpu_secs - a.cpu_secs) / (t1 - t0) * 100.0;
        }
        self.stats
    }
}
