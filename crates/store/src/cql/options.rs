//! Where the CQL store connects and how it writes: parsed from a
//! `cql://host:port[,host:port…]/keyspace?option=value&…` URL.

use std::fmt;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

/// How the keyspace replicates, used only when the store creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this replication factor: a single-datacenter
    /// cluster or a test server.
    Simple(u32),
    /// `NetworkTopologyStrategy` with a factor per datacenter.
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// The CQL map literal of `CREATE KEYSPACE … WITH replication = …`.
    pub(crate) fn cql(&self) -> String {
        match self {
            Replication::Simple(factor) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in dcs {
                    map.push_str(&format!(", '{dc}': {factor}"));
                }
                map.push('}');
                map
            }
        }
    }
}

/// Connection and write settings of a [`CqlStore`](super::CqlStore).
#[derive(Debug, Clone, PartialEq)]
pub struct CqlOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Used when the keyspace does not exist yet (`replication=`): `1` or
    /// `simple:N` for `SimpleStrategy`, `dc1:3,dc2:3` for
    /// `NetworkTopologyStrategy`.
    pub replication: Replication,
    /// Consistency of every read and write (`consistency=`, default
    /// `quorum`).
    pub consistency: Consistency,
    /// Consistency of the conditional appends' Paxos round and of the reads
    /// that resolve an append with an unknown outcome (`serial=`, default
    /// `serial`).
    pub serial_consistency: SerialConsistency,
    /// Client-side limit of one request (`timeout_ms=`, default 5000).
    pub request_timeout: Duration,
    /// Most bytes of ops in one conditional write (`max_batch_kib=`, default
    /// 256). A larger append is written as consecutive conditional writes;
    /// the server's `batch_size_fail_threshold` must be above this.
    pub max_batch_bytes: usize,
    /// How long start-up waits for the cluster (`connect_timeout_ms=`,
    /// default 30000).
    pub connect_timeout: Duration,
    /// Most conditional appends in flight at once (`max_in_flight=`, default
    /// 128). More wait in this process, where waiting costs nothing,
    /// instead of queueing in the server until they time out.
    pub max_in_flight: usize,
}

impl CqlOptions {
    /// Options for `nodes` and `keyspace` with every default.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        CqlOptions {
            nodes,
            keyspace: keyspace.into(),
            replication: Replication::Simple(1),
            consistency: Consistency::Quorum,
            serial_consistency: SerialConsistency::Serial,
            request_timeout: Duration::from_secs(5),
            max_batch_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(30),
            max_in_flight: 128,
        }
    }

    /// Parses `cql://host:port[,host:port…]/keyspace[?option=value&…]`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("cql://")
            .ok_or_else(|| format!("`{url}`: a CQL store URL starts with cql://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = path
            .split_once('/')
            .ok_or_else(|| format!("`{url}`: no keyspace (cql://host:port/keyspace)"))?;
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_string()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        check_identifier(keyspace)?;
        let mut options = CqlOptions::new(nodes, keyspace);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: options are key=value"))?;
            match key {
                "replication" => options.replication = parse_replication(value)?,
                "consistency" => options.consistency = parse_consistency(value)?,
                "serial" => {
                    options.serial_consistency = match value {
                        "serial" => SerialConsistency::Serial,
                        "local_serial" => SerialConsistency::LocalSerial,
                        _ => return Err(format!("serial=`{value}`: serial or local_serial")),
                    }
                }
                "timeout_ms" => {
                    options.request_timeout = Duration::from_millis(parse_positive(key, value)?)
                }
                "connect_timeout_ms" => {
                    options.connect_timeout = Duration::from_millis(parse_positive(key, value)?)
                }
                "max_in_flight" => {
                    options.max_in_flight =
                        usize::try_from(parse_positive(key, value)?).unwrap_or(usize::MAX)
                }
                "max_batch_kib" => {
                    options.max_batch_bytes = usize::try_from(parse_positive(key, value)?)
                        .unwrap_or(usize::MAX)
                        .saturating_mul(1024)
                }
                _ => return Err(format!("unknown CQL store option `{key}`")),
            }
        }
        Ok(options)
    }
}

/// The URL form, without defaults (so it can be logged: it has no secrets).
impl fmt::Display for CqlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cql://{}/{}", self.nodes.join(","), self.keyspace)
    }
}

fn check_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyspace `{name}`: 1 to 48 letters, digits or _, starting with a letter"
        ))
    }
}

fn parse_positive(key: &str, value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{key}=`{value}`: a positive integer")),
    }
}

fn parse_replication(value: &str) -> Result<Replication, String> {
    let factor = |s: &str| match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "replication `{value}`: factors are positive integers"
        )),
    };
    if value.parse::<u32>().is_ok() {
        return Ok(Replication::Simple(factor(value)?));
    }
    if let Some(n) = value.strip_prefix("simple:") {
        return Ok(Replication::Simple(factor(n)?));
    }
    let mut dcs = Vec::new();
    for dc in value.split(',') {
        let (name, n) = dc
            .split_once(':')
            .ok_or_else(|| format!("replication `{value}`: N, simple:N or dc:N,dc:N"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "replication `{value}`: bad datacenter name `{name}`"
            ));
        }
        dcs.push((name.to_string(), factor(n)?));
    }
    Ok(Replication::NetworkTopology(dcs))
}

fn parse_consistency(value: &str) -> Result<Consistency, String> {
    Ok(match value {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => {
            return Err(format!(
                "consistency=`{value}`: one, two, three, quorum, all, local_quorum, each_quorum or local_one"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let o = CqlOptions::from_url(
            "cql://a:9042,b:19042/collab_prod?replication=dc1:3,dc2:3&consistency=local_quorum&serial=local_serial&timeout_ms=2000&max_batch_kib=64&connect_timeout_ms=100&max_in_flight=7",
        )
        .expect("valid");
        assert_eq!(o.nodes, vec!["a:9042", "b:19042"]);
        assert_eq!(o.keyspace, "collab_prod");
        assert_eq!(
            o.replication,
            Replication::NetworkTopology(vec![("dc1".into(), 3), ("dc2".into(), 3)])
        );
        assert_eq!(
            o.replication.cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 3}"
        );
        assert_eq!(o.consistency, Consistency::LocalQuorum);
        assert_eq!(o.serial_consistency, SerialConsistency::LocalSerial);
        assert_eq!(o.request_timeout, Duration::from_secs(2));
        assert_eq!(o.max_batch_bytes, 64 * 1024);
        assert_eq!(o.connect_timeout, Duration::from_millis(100));
        assert_eq!(o.max_in_flight, 7);
        assert_eq!(o.to_string(), "cql://a:9042,b:19042/collab_prod");
    }

    #[test]
    fn defaults_and_default_port() {
        let o = CqlOptions::from_url("cql://localhost/collab").expect("valid");
        assert_eq!(o.nodes, vec!["localhost:9042"]);
        assert_eq!(o.replication, Replication::Simple(1));
        assert_eq!(
            o.replication.cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(o.consistency, Consistency::Quorum);
        assert_eq!(o.serial_consistency, SerialConsistency::Serial);
        assert_eq!(
            CqlOptions::from_url("cql://h:1/k?replication=simple:3")
                .expect("valid")
                .replication,
            Replication::Simple(3)
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "http://h/k",
            "cql://h",
            "cql:///k",
            "cql://h/",
            "cql://h/1abc",
            "cql://h/a-b",
            "cql://h/k?consistency=many",
            "cql://h/k?serial=quorum",
            "cql://h/k?timeout_ms=0",
            "cql://h/k?replication=0",
            "cql://h/k?replication=dc1",
            "cql://h/k?replication=d'c:3",
            "cql://h/k?what=1",
            "cql://h/k?novalue",
        ] {
            assert!(CqlOptions::from_url(bad).is_err(), "{bad} was accepted");
        }
    }
}
