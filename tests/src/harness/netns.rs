//! Network namespaces for partition tests: a process of the cluster runs in
//! a namespace of its own, joined to the host by veth pairs that the test
//! creates, and a test cuts a pair to partition it: the process keeps
//! running and talks to nobody over that link.
//!
//! [`NetNs::create`] makes the namespace (`ip netns add`) and
//! [`NetNs::add_link`] a veth pair with one end moved into it, each end
//! with an address of its own `/30` in 10.203.0.0/16 (a range this harness
//! uses only for such pairs: nothing else on the machine is reached through
//! them, and a namespace has no other route out). [`NetNs::command`] runs a
//! program inside it (`ip netns exec`, which execs the program: the child's
//! pid is the program's). [`Link::cut`] sets the host end down: whatever
//! the process sends over the link is dropped, and nothing reaches it,
//! without an error that would tell it so at once — a partition, not a
//! closed socket. Dropping the `NetNs` deletes its links and the namespace,
//! also when the test fails; namespaces left by a test process that was
//! killed are removed by the next one.
//!
//! The servers stay on the host's loopback. A [`Relay`] listens on the host
//! end of a link and forwards each connection to a loopback address, so a
//! process inside the namespace reaches NATS and the CQL server over the
//! link, and loses them when it is cut. The CQL driver also dials the
//! address the server gives for itself (127.0.0.1 and its port), so
//! [`NetNs::relay_inside`] listens on that address inside the namespace
//! and forwards over the link to the host end's relay.
//!
//! Where the kernel or the permissions refuse (no `ip`, not root, no
//! network namespaces), `create` says why and the test skips.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::HarnessError;

/// Namespaces of this harness are named `collab-test-PID-N`.
const NS_PREFIX: &str = "collab-test-";
/// The second octet of every address: 10.203.0.0/16, split into /30s.
const SUBNET_OCTET: u8 = 203;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with its veth links; removed on drop.
pub struct NetNs {
    name: String,
    links: Vec<Link>,
}

/// One veth pair: `host_if` (in the host namespace) and its peer in the
/// namespace.
#[derive(Debug, Clone)]
pub struct Link {
    host_if: String,
    /// The host end's address: what the process inside dials.
    pub host_addr: Ipv4Addr,
    /// The namespace end's address: where the process inside listens.
    pub ns_addr: Ipv4Addr,
}

impl NetNs {
    /// Creates a namespace with its loopback up. `Err` with the reason when
    /// this machine cannot (the caller skips its test).
    pub fn create() -> Result<NetNs, String> {
        remove_stale_namespaces();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let ns = NetNs {
            name,
            links: Vec::new(),
        };
        ns.exec_ip(&["link", "set", "lo", "up"])
            .map_err(|e| format!("cannot set up the namespace's loopback: {e}"))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a veth pair with one end in the namespace, both ends up with
    /// their addresses.
    pub fn add_link(&mut self) -> Result<Link, HarnessError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 characters.
        let host_if = format!("ct{:x}h{n}", std::process::id() & 0xfffff);
        let ns_if = format!("ct{:x}n{n}", std::process::id() & 0xfffff);
        let (host_addr, ns_addr) = free_subnet()?;
        let setup = |args: &[&str]| ip(args).map_err(HarnessError::Setup);
        setup(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        // Registered at once, so a failure below still removes the pair.
        let link = Link {
            host_if: host_if.clone(),
            host_addr,
            ns_addr,
        };
        self.links.push(link.clone());
        setup(&["link", "set", &ns_if, "netns", &self.name])?;
        setup(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])?;
        setup(&["link", "set", &host_if, "up"])?;
        self.exec_ip(&["addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if])
            .map_err(HarnessError::Setup)?;
        self.exec_ip(&["link", "set", &ns_if, "up"])
            .map_err(HarnessError::Setup)?;
        Ok(link)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Listens on `127.0.0.1:port` inside the namespace and forwards every
    /// connection to `target` (a [`Relay`] on a link's host end), on a
    /// thread of its own that has entered the namespace; stops on drop.
    pub fn relay_inside(&self, port: u16, target: SocketAddr) -> Result<InnerRelay, HarnessError> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // Only this thread moves: every socket it makes is the
            // namespace's, the listener and the connections to `target`.
            let entered = rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build();
            let (runtime, listener) = match (entered, runtime) {
                (Ok(()), Ok(runtime)) => {
                    let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", port)));
                    (runtime, listener)
                }
                (Err(e), _) => {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                (_, Err(e)) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready_tx.send(Ok(()));
                    listener
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind 127.0.0.1:{port}: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = forward_all(listener, target) => {}
                    _ = stopped => {}
                }
            });
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(InnerRelay {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(why)) => Err(HarnessError::Setup(format!(
                "relay inside {}: {why}",
                self.name
            ))),
            Err(_) => Err(HarnessError::Setup(format!(
                "relay inside {}: its thread died",
                self.name
            ))),
        }
    }

    fn exec_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Link {
    /// Partitions the link: the host end goes down, so nothing crosses it
    /// either way.
    pub fn cut(&self) -> Result<(), HarnessError> {
        ip(&["link", "set", &self.host_if, "down"]).map_err(HarnessError::Setup)
    }

    /// Heals the link.
    pub fn heal(&self) -> Result<(), HarnessError> {
        ip(&["link", "set", &self.host_if, "up"]).map_err(HarnessError::Setup)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end of a pair deletes both; deleting the namespace
        // deletes the ends inside it. Both, in case a step failed halfway.
        for link in &self.links {
            let _ = ip(&["link", "del", &link.host_if]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip ARGS`; `Err` with what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A /30 of 10.203.0.0/16 that no interface of the host has an address in:
/// (host end, namespace end).
fn free_subnet() -> Result<(Ipv4Addr, Ipv4Addr), HarnessError> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| HarnessError::Setup(format!("ip addr: {e}")))?;
    let taken = String::from_utf8_lossy(&output.stdout).into_owned();
    // Start from a spot of this process's own, so parallel test processes
    // rarely try the same subnets.
    let start =
        (std::process::id().wrapping_mul(64) + NEXT.fetch_add(1, Ordering::Relaxed)) % 16384;
    for i in 0..16384u32 {
        let base = ((start + i) % 16384) * 4;
        let [_, _, c, d] = base.to_be_bytes();
        let host = Ipv4Addr::new(10, SUBNET_OCTET, c, d + 1);
        let peer = Ipv4Addr::new(10, SUBNET_OCTET, c, d + 2);
        if !taken.contains(&format!(" {host}/")) && !taken.contains(&format!(" {peer}/")) {
            return Ok((host, peer));
        }
    }
    Err(HarnessError::Setup("no free /30 in 10.203.0.0/16".into()))
}

/// Removes the namespaces (and so their links) of test processes that are
/// gone: a test killed before its `Drop` ran leaves them behind.
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
    // Host ends whose peer went with a namespace are gone with it; a host
    // end whose namespace was never joined is removed by its owner's Drop.
}

// === relays ===

/// Forwards every connection made to `listen` (an address on a link's
/// host end) to `target` (a loopback server); stops on drop.
pub struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(listen: Ipv4Addr, target: SocketAddr) -> Result<Relay, HarnessError> {
        let listener = TcpListener::bind((listen, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(forward_all(listener, target));
        Ok(Relay { addr, task })
    }

    /// Where the process in the namespace connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The relay of [`NetNs::relay_inside`].
pub struct InnerRelay {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for InnerRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections on `listener` and forwards each to `target` until
/// the future is dropped, which ends every connection too.
async fn forward_all(listener: TcpListener, target: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        // Reap the finished ones as we go.
        while connections.try_join_next().is_some() {}
    }
}
