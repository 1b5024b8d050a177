//! Reading `/metrics` pages, and the list of metrics `docs/metrics.md`
//! documents, so a test can check a running server against the doc both
//! ways: everything documented for its role is there, and everything there
//! is documented.

use std::collections::BTreeSet;
use std::path::Path;

/// One metric as `docs/metrics.md` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documented {
    /// As the page shows it: a counter with `_total`, a histogram without
    /// its `_bucket`/`_sum`/`_count` suffix.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// `serve`, `gateway`, `room-node`.
    pub roles: Vec<String>,
}

impl Documented {
    /// The sample name that is there whenever the metric is: a
    /// histogram's `_count`, the name otherwise.
    pub fn sample_name(&self) -> String {
        if self.kind == "histogram" {
            format!("{}_count", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// Every metric of `docs/metrics.md`: the rows of its tables whose first
/// cell is a name in backticks (`| name | type | labels | meaning | roles |`).
pub fn documented() -> Vec<Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let metrics: Vec<Documented> = text
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let [_, kind, _, _, roles] = cells.as_slice() else {
                panic!("a metrics row without five cells: {line}");
            };
            Some(Documented {
                name: name.to_owned(),
                kind: (*kind).to_owned(),
                roles: roles.split(',').map(|r| r.trim().to_owned()).collect(),
            })
        })
        .collect();
    assert!(
        metrics.len() > 20,
        "too few metrics found in docs/metrics.md"
    );
    metrics
}

/// The metrics `docs/metrics.md` lists for `role`.
pub fn documented_for(role: &str) -> Vec<Documented> {
    documented()
        .into_iter()
        .filter(|m| m.roles.iter().any(|r| r == role))
        .collect()
}

/// The value of the sample `series`, written as the page writes it (name,
/// then labels if any: `collab_ready`, `x_total{code="bad_request"}`).
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// Whether the page has a sample of `name`, with any labels.
pub fn has_sample(page: &str, name: &str) -> bool {
    page.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// The families of a page by the names `docs/metrics.md` uses (from its
/// `# TYPE` lines: a counter's name gets `_total`).
pub fn families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (words.next()?, words.next()?);
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

/// Checks a page of a process of `role` against the doc: every metric
/// documented for the role is there, and every family there is documented
/// for the role. Returns what is wrong, empty when nothing is.
pub fn check_against_doc(page: &str, role: &str) -> Vec<String> {
    let expected = documented_for(role);
    let mut problems: Vec<String> = expected
        .iter()
        .filter(|m| !has_sample(page, &m.sample_name()))
        .map(|m| format!("{} is documented for {role} but not exported", m.name))
        .collect();
    let documented: BTreeSet<String> = expected.into_iter().map(|m| m.name).collect();
    problems.extend(
        families(page)
            .into_iter()
            .filter(|family| !documented.contains(family))
            .map(|family| format!("{family} is exported by {role} but not documented for it")),
    );
    problems
}
