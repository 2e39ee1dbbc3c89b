//! Many simulated agents in one process: N real agent sessions ([`swarm_agent::Agent`],
//! the daemon's own membership and session code) on one tokio runtime, for scale tests and
//! `cargo xtask bench scale`.
//!
//! Each node joins through the real join path (root CA checked against the worker token,
//! its own key and certificate from the managers' CA), then keeps the daemon's session with
//! the leader over gRPC/mTLS: heartbeats at the period the managers give, the assignments
//! and network state streams consumed, status reports in batches, certificate renewal.
//! What it does not have is what a node needs only to run containers: no control socket,
//! no containerd, no data plane (eBPF), no in-process manager (the nodes are workers).
//!
//! Node i (from 0) is `sim-NNNNN` advertising 127.1.(i / 250).(i % 250 + 1): distinct
//! loopback addresses beside the 127.0.0.N of the harness's real daemons. Its data root
//! (state and certificates) is a directory of the harness's root.
//!
//! The executor is [`InstantExecutor`]: a task is RUNNING as soon as it is assigned and
//! SHUTDOWN when told to stop; every running task is in [`RunningTasks`], so that a test
//! sees what the executors run, not only what the managers believe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use proto::{NodeAvailability, Task, TaskState};
use swarm_agent::agent::JoinOptions;
use swarm_agent::executor::ExecutorDescription;
use swarm_agent::{Agent, AgentConfig, Executor, TaskReporter};
use tokio::sync::watch;

/// A task an [`InstantExecutor`] runs right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    pub task_id: String,
    pub service_id: String,
    /// The replicated task's slot (0 for a global task).
    pub slot: u64,
    /// The node id the task was assigned to.
    pub node_id: String,
    /// The simulated node that runs it.
    pub hostname: String,
}

/// Every task the executors of a [`SimAgents`] run right now (a task twice if two nodes
/// run it).
#[derive(Clone, Default)]
pub struct RunningTasks(Arc<Mutex<Vec<RunningTask>>>);

impl RunningTasks {
    pub fn snapshot(&self) -> Vec<RunningTask> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&self, t: RunningTask) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    }

    fn remove(&self, task_id: &str, hostname: &str) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v
            .iter()
            .position(|t| t.task_id == task_id && t.hostname == hostname)
        {
            v.swap_remove(i);
        }
    }
}

/// The executor of a simulated node: RUNNING at once, SHUTDOWN when told to stop.
pub struct InstantExecutor {
    hostname: String,
    running: RunningTasks,
}

impl Executor for InstantExecutor {
    fn describe(&self) -> ExecutorDescription {
        ExecutorDescription {
            engine_labels: [("executor".to_string(), "instant".to_string())].into(),
            ..crate::sim_executor::SimExecutor.describe()
        }
    }

    fn run(
        &self,
        task: Task,
        reporter: TaskReporter,
        mut stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let hostname = self.hostname.clone();
        let running = self.running.clone();
        Box::pin(async move {
            running.add(RunningTask {
                task_id: task.id.clone(),
                service_id: task.service_id.clone(),
                slot: task.slot,
                node_id: task.node_id.clone(),
                hostname: hostname.clone(),
            });
            reporter.report(TaskState::Running, "started");
            // Until told to stop, or until the agent drops the task (the sender is gone).
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            running.remove(&task.id, &hostname);
            reporter.report(TaskState::Shutdown, "shutdown");
        })
    }
}

/// One simulated node.
pub struct SimNode {
    pub hostname: String,
    /// The advertised address (`IP:2377`).
    pub addr: String,
    pub node_id: String,
    pub agent: Arc<Agent>,
}

/// The simulated agents of one swarm, on a runtime of their own (dropped with them).
pub struct SimAgents {
    root: PathBuf,
    pub nodes: Vec<SimNode>,
    running: RunningTasks,
    // Last: the agents' tasks end when the runtime drops.
    rt: tokio::runtime::Runtime,
}

/// The address of simulated node `i`: 127.1.(i / 250).(i % 250 + 1).
pub fn sim_ip(i: usize) -> String {
    assert!(i < 250 * 256, "at most 64 000 simulated nodes");
    format!("127.1.{}.{}", i / 250, i % 250 + 1)
}

impl SimAgents {
    /// No nodes yet; their data roots go under `root`. `threads`: the runtime's workers.
    pub fn new(root: &Path, threads: usize) -> anyhow::Result<SimAgents> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sim-agents")
            .enable_all()
            .build()?;
        Ok(SimAgents {
            root: root.to_path_buf(),
            nodes: Vec::new(),
            running: RunningTasks::default(),
            rt,
        })
    }

    /// What the executors run right now.
    pub fn running(&self) -> &RunningTasks {
        &self.running
    }

    /// Joins `count` more nodes to the swarm of the manager at `remote` with the worker
    /// `token`, `parallel` joins at a time; `joined` counts the nodes in as they come (for
    /// a progress display). A refused join is tried again (5 times, a second apart: a
    /// manager under load may time out) before the whole call fails with its error.
    pub fn join(
        &mut self,
        count: usize,
        remote: &str,
        token: &str,
        parallel: usize,
        joined: &AtomicUsize,
    ) -> anyhow::Result<()> {
        let first = self.nodes.len();
        let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut handles = Vec::with_capacity(count);
        for i in first..first + count {
            let hostname = format!("sim-{i:05}");
            let ip = sim_ip(i);
            let data_root = self.root.join(&hostname);
            let executor = Arc::new(InstantExecutor {
                hostname: hostname.clone(),
                running: self.running.clone(),
            });
            let cfg = AgentConfig {
                data_root: data_root.clone(),
                socket: data_root.join("unused.sock"),
                hostname: hostname.clone(),
                metrics_addr: None,
                data_plane: None,
                raft_timing: Default::default(),
                raft_snapshot_interval: swarm_agent::DEFAULT_SNAPSHOT_INTERVAL,
            };
            swarm_agent::state::Paths::new(&data_root).secure()?;
            let agent = {
                let _in_runtime = self.rt.enter();
                Agent::new(cfg, executor)
            };
            let (sem, remote, token) = (sem.clone(), remote.to_string(), token.to_string());
            let addr = format!("{ip}:2377");
            handles.push(self.rt.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let r = agent
                        .join(JoinOptions {
                            remote: remote.clone(),
                            token: token.clone(),
                            advertise_addr: addr.clone(),
                            listen_addr: addr.clone(),
                            availability: NodeAvailability::Active,
                        })
                        .await;
                    match r {
                        Ok((node_id, _)) => {
                            return Ok(SimNode {
                                hostname,
                                addr,
                                node_id,
                                agent,
                            })
                        }
                        Err(e) if attempt < 5 => {
                            eprintln!("{hostname}: join refused, trying again: {e:#}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e.context(format!("{hostname} joining {remote}"))),
                    }
                }
            }));
        }
        for h in handles {
            let node = self.rt.block_on(h)??;
            self.nodes.push(node);
            joined.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The network state bytes each node received so far (its `NetworkState` messages).
    pub fn network_state_bytes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.agent.network_state_bytes())
            .collect()
    }

    /// The node ids of the simulated nodes.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_id.clone()).collect()
    }

    /// Runs `f` on the agents' runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// How many of the nodes `ids` are Ready in `nodes` (a manager's node list).
pub fn ready_count(nodes: &[proto::Node], ids: &std::collections::BTreeSet<String>) -> usize {
    nodes
        .iter()
        .filter(|n| ids.contains(&n.id))
        .filter(|n| {
            n.status
                .as_ref()
                .is_some_and(|s| s.state == proto::NodeState::Ready as i32)
        })
        .count()
}

/// Tasks an executor runs more than once for the same place: (service, slot) for replicated
/// tasks, (service, node) for global ones (slot 0), with the tasks. Empty when every place
/// runs at most one task.
pub fn duplicates(running: &[RunningTask]) -> Vec<((String, String), Vec<String>)> {
    let mut by_place: HashMap<(String, String), Vec<String>> = HashMap::new();
    for t in running {
        let place = if t.slot == 0 {
            t.node_id.clone()
        } else {
            t.slot.to_string()
        };
        by_place
            .entry((t.service_id.clone(), place))
            .or_default()
            .push(t.task_id.clone());
    }
    let mut dups: Vec<_> = by_place.into_iter().filter(|(_, v)| v.len() > 1).collect();
    dups.sort();
    dups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, service: &str, slot: u64, node: &str) -> RunningTask {
        RunningTask {
            task_id: id.into(),
            service_id: service.into(),
            slot,
            node_id: node.into(),
            hostname: node.into(),
        }
    }

    #[test]
    fn two_tasks_in_one_slot_or_on_one_node_of_a_global_service_are_duplicates() {
        let ok = [
            t("a", "s1", 1, "n1"),
            t("b", "s1", 2, "n1"),
            t("c", "g", 0, "n1"),
            t("d", "g", 0, "n2"),
        ];
        assert!(duplicates(&ok).is_empty());
        let bad = [
            t("a", "s1", 1, "n1"),
            t("b", "s1", 1, "n2"),
            t("c", "g", 0, "n1"),
            t("d", "g", 0, "n1"),
        ];
        let d = duplicates(&bad);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].0, ("g".to_string(), "n1".to_string()));
        assert_eq!(d[1].1, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn simulated_addresses_are_distinct_loopback_addresses() {
        let ips: std::collections::HashSet<String> = (0..5000).map(sim_ip).collect();
        assert_eq!(ips.len(), 5000);
        assert!(ips.iter().all(|ip| ip.starts_with("127.1.")));
        assert_eq!(sim_ip(0), "127.1.0.1");
        assert_eq!(sim_ip(250), "127.1.1.1");
    }
}
