//! What the lab's test files share: temporary labs ([`LabConfig::for_tests`]), one lab at a
//! time per test binary ([`test_lab`]), and shorthands that panic with the lab's logs where
//! the [`Lab`] API returns an error.

use std::sync::Mutex;
use std::time::Duration;

use super::config::{random_name, test_root, AGENT_MODE_ENV};
use super::{sys, Lab, LabConfig, LabNode};
use crate::client::AgentClient;

/// How long tasks may take to start (pulls included).
pub const LONG: Duration = Duration::from_secs(90);

/// How long a task RUNNING in the store may take to be a backend on every node's data path
/// ([`Lab::task_get_once_served`]): a bound on liveness under CI's load, not a figure of
/// speed.
pub const SERVED: Duration = Duration::from_secs(10);

impl LabConfig {
    /// A temporary lab with a random 4-letter name, rooted in `/tmp/swl-<name>`, using the
    /// binaries of this test build (target/debug); its agents are containers when
    /// `SWARM_LAB_AGENT=container`. Removes the labs of test processes that died without
    /// tearing theirs down first.
    pub fn for_tests(managers: usize, workers: usize) -> LabConfig {
        for (name, e) in Lab::sweep_stale() {
            eprintln!("removing the stale test lab {name}: {e}");
        }
        let name = loop {
            let n = random_name();
            if sys::lab_netns(&n).is_empty() && !test_root(&n).exists() {
                break n;
            }
        };
        let mut cfg = LabConfig::new(&name, managers, workers, test_root(&name), crate::bin_dir());
        cfg.temporary = true;
        cfg.agent_container = match std::env::var(AGENT_MODE_ENV).as_deref() {
            Ok("container") => true,
            Ok("" | "process") | Err(_) => false,
            Ok(other) => panic!("{AGENT_MODE_ENV}={other:?}: use \"container\" or \"process\""),
        };
        cfg
    }
}

/// Labs are heavy on two cores: the tests of one binary take theirs one at a time.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test lab of `managers` + `workers` nodes, once no other test of this binary holds one;
/// keep the guard as long as the lab.
pub fn test_lab(managers: usize, workers: usize) -> (std::sync::MutexGuard<'static, ()>, Lab) {
    let guard = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(LabConfig::for_tests(managers, workers)).unwrap_or_else(|e| panic!("{e:#}"));
    (guard, lab)
}

/// [`Lab::running_tasks`] within [`LONG`].
pub fn wait_running(lab: &Lab, service: &str, n: usize) -> Vec<proto::Task> {
    lab.running_tasks(service, n, LONG)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()))
}

/// `swarm service create -d ARGS…` on node1.
pub fn create(lab: &Lab, args: &[&str]) {
    lab.node(1).create_service(args);
}

/// [`Lab::node_of`]: the lab node a task runs on.
pub fn node_of<'a>(lab: &'a Lab, task: &proto::Task) -> &'a LabNode {
    lab.node_of(task).unwrap_or_else(|e| panic!("{e:#}"))
}
