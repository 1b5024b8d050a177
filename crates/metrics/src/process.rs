//! The standard `process_*` metrics, read from Linux's `/proc` (through
//! the `procfs` crate) at each scrape, named as every Prometheus client
//! library names them so that stock dashboards and alerts apply.
//!
//! A figure that cannot be read is left out of that scrape rather than
//! failing it. On other systems there are none.

use prometheus_client::registry::Registry;

pub(crate) fn register(registry: &mut Registry) {
    #[cfg(target_os = "linux")]
    registry.register_collector(Box::new(linux::ProcessCollector));
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

#[cfg(target_os = "linux")]
mod linux {
    use procfs::process::{LimitValue, Process};
    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::DescriptorEncoder;

    use crate::emit;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Debug)]
    pub(super) struct ProcessCollector;

    impl Collector for ProcessCollector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let Ok(process) = Process::myself() else {
                return Ok(());
            };
            let e = &mut encoder;
            if let Ok(stat) = process.stat() {
                let ticks = procfs::ticks_per_second() as f64;
                emit(
                    e,
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    ConstCounter::new((stat.utime + stat.stime) as f64 / ticks),
                )?;
                emit(
                    e,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    ConstGauge::new(stat.rss.saturating_mul(procfs::page_size())),
                )?;
                emit(
                    e,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    ConstGauge::new(stat.vsize),
                )?;
                emit(
                    e,
                    "process_threads",
                    "Number of OS threads in the process",
                    ConstGauge::new(stat.num_threads),
                )?;
                if let Ok(boot) = procfs::boot_time_secs() {
                    let started = boot as f64 + stat.starttime as f64 / ticks;
                    emit(
                        e,
                        "process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds",
                        ConstGauge::new(started),
                    )?;
                }
            }
            if let Ok(open) = process.fd_count() {
                emit(
                    e,
                    "process_open_fds",
                    "Number of open file descriptors",
                    ConstGauge::new(open),
                )?;
            }
            if let Ok(limits) = process.limits()
                && let LimitValue::Value(max) = limits.max_open_files.soft_limit
            {
                emit(
                    e,
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    ConstGauge::new(max),
                )?;
            }
            Ok(())
        }
    }
}
