//! Convergence progress of `service create/update/scale` without `-d`, as Docker shows it:
//!
//! ```text
//! overall progress: 2 out of 2 tasks
//! 1/2: running   [==================================================>]
//! 2/2: running   [==================================================>]
//! verify: Service converged
//! ```
//!
//! On a terminal the block is redrawn in place; otherwise a line is printed only when its
//! text changed. The counting rules follow the Docker CLI's progress updaters.
//!
//! Updates and rollbacks are followed through the service's `UpdateStatus`: a rollback
//! started by the managers prints their message (`rollback: manually requested rollback`,
//! `rollback: update rolled back due to failure or early termination of task …`), the
//! overall line becomes `rolling back update: N out of M tasks`, and a paused update or
//! rollback ends the wait with Docker's error. See [`StatusWatch`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use proto::{ListTasksRequest, NodeState, Service, Task, TaskState, UpdateState, UpdateStatus};

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::format::truncate_id;

/// Progress position of a state (Docker's `numberedStates`); 0 = not shown.
fn numbered(state: TaskState) -> u32 {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Ready => 7,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        TaskState::Complete => 10,
        TaskState::Shutdown => 11,
        TaskState::Failed => 12,
        TaskState::Rejected => 13,
        TaskState::Remove | TaskState::Orphaned => 0,
    }
}

const MAX_PROGRESS: u32 = 9;
const MAX_PROGRESS_BARS: u64 = 20;
/// Width state names are padded to ("preparing", "allocated").
const LONGEST_STATE: usize = 9;
/// How long tasks must stay running before the service counts as converged (Docker's
/// default update monitor period). `SWARM_CONVERGE_MONITOR` (Go duration) overrides it.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(300);

fn terminal(state: TaskState) -> bool {
    numbered(state) > numbered(TaskState::Running)
}

/// One progress message: `<id>: <action> [bar]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub id: String,
    pub action: String,
    /// Progress out of 9 (task lines only).
    pub progress: Option<u32>,
}

impl Line {
    fn text(id: impl Into<String>, action: impl Into<String>) -> Line {
        Line {
            id: id.into(),
            action: action.into(),
            progress: None,
        }
    }

    /// The rendered line. On a terminal wider than 110 columns task lines get Docker's bar.
    pub fn render(&self, tty: bool, width: usize) -> String {
        if !tty {
            return format!("{}: {}", self.id, self.action)
                .trim_end()
                .to_string();
        }
        let bar = match self.progress {
            Some(cur) if width > 110 => {
                let pct = ((cur as f64 / MAX_PROGRESS as f64 * 100.0) as usize / 2).min(50);
                format!("[{}>{}] ", "=".repeat(pct), " ".repeat(50 - pct))
            }
            _ => String::new(),
        };
        format!("{}: {} {}", self.id, self.action, bar)
    }
}

fn truncate_error(err: &str) -> String {
    let e = err.replace('\n', " ");
    if e.chars().count() > 75 {
        let mut s: String = e.chars().take(74).collect();
        s.push('…');
        s
    } else {
        e
    }
}

fn task_line(id: String, task: &Task) -> Option<Line> {
    let err = task.status.as_ref().map_or("", |s| s.err.as_str());
    if !err.is_empty() {
        return Some(Line::text(id, truncate_error(err)));
    }
    let state = task.state();
    if !terminal(task.desired()) && !terminal(state) {
        return Some(Line {
            id,
            action: format!("{:<LONGEST_STATE$}", state.display_name()),
            progress: Some(numbered(state)),
        });
    }
    None
}

fn overall(running: u64, total: u64, rollback: bool) -> Line {
    let prefix = if rollback {
        "rolling back update: "
    } else {
        ""
    };
    Line::text(
        "overall progress",
        format!("{prefix}{running} out of {total} tasks"),
    )
}

/// Keeps, per key, the task with the lowest desired state, then the lowest observed state
/// (restarts and start-first updates leave several tasks per slot).
fn pick<'a, K: Ord>(map: &mut BTreeMap<K, &'a Task>, key: K, t: &'a Task) {
    if let Some(existing) = map.get(&key) {
        let (ed, td) = (numbered(existing.desired()), numbered(t.desired()));
        if ed < td || (ed == td && numbered(existing.state()) <= numbered(t.state())) {
            return;
        }
    }
    map.insert(key, t);
}

/// The counting state kept between polls.
#[derive(Debug, Default)]
pub struct Updater {
    global: bool,
    initialized: bool,
    done: bool,
    slot_map: HashMap<u64, u64>,
    /// The managers are rolling the service back (set from [`StatusWatch::rollback`]).
    pub rollback: bool,
}

impl Updater {
    pub fn new(service: &Service) -> Updater {
        Updater {
            global: service.is_global(),
            ..Default::default()
        }
    }

    /// One poll: the lines to (re)draw and whether every task is running.
    pub fn update(
        &mut self,
        service: &Service,
        tasks: &[Task],
        active_nodes: &HashSet<String>,
        out: &mut Vec<Line>,
    ) -> bool {
        if self.global {
            self.update_global(tasks, active_nodes, out)
        } else {
            self.update_replicated(service.replicas().unwrap_or(1), tasks, active_nodes, out)
        }
    }

    fn update_replicated(
        &mut self,
        replicas: u64,
        tasks: &[Task],
        active_nodes: &HashSet<String>,
        out: &mut Vec<Line>,
    ) -> bool {
        if !self.initialized {
            out.push(overall(0, replicas, self.rollback));
            if replicas <= MAX_PROGRESS_BARS {
                for i in 1..=replicas {
                    out.push(Line::text(format!("{i}/{replicas}"), " "));
                }
            }
            self.initialized = true;
        }
        let mut by_slot = BTreeMap::new();
        for t in tasks {
            if numbered(t.desired()) == 0 || numbered(t.state()) == 0 {
                continue;
            }
            if !t.node_id.is_empty() && !active_nodes.contains(&t.node_id) {
                continue;
            }
            pick(&mut by_slot, t.slot, t);
        }
        if self.done && by_slot.values().any(|t| t.state() != TaskState::Running) {
            self.done = false;
        }
        let mut running = 0;
        for (slot, t) in &by_slot {
            let next = self.slot_map.len() as u64 + 1;
            let mapped = *self.slot_map.entry(*slot).or_insert(next);
            if !terminal(t.desired()) && t.state() == TaskState::Running {
                running += 1;
            }
            if !self.done && replicas <= MAX_PROGRESS_BARS && mapped <= replicas {
                if let Some(l) = task_line(format!("{mapped}/{replicas}"), t) {
                    out.push(l);
                }
            }
        }
        if !self.done {
            out.push(overall(running, replicas, self.rollback));
            if running == replicas {
                self.done = true;
            }
        }
        running == replicas
    }

    fn update_global(
        &mut self,
        tasks: &[Task],
        active_nodes: &HashSet<String>,
        out: &mut Vec<Line>,
    ) -> bool {
        let mut by_node = BTreeMap::new();
        for t in tasks {
            if numbered(t.desired()) == 0 || numbered(t.state()) == 0 {
                continue;
            }
            pick(&mut by_node, t.node_id.as_str(), t);
        }
        let node_count = by_node.len() as u64;
        if !self.initialized {
            if node_count == 0 {
                out.push(Line::text("overall progress", "waiting for new tasks"));
                return false;
            }
            out.push(overall(0, node_count, self.rollback));
            self.initialized = true;
        }
        if self.done && by_node.values().any(|t| t.state() != TaskState::Running) {
            self.done = false;
        }
        let mut running = 0;
        for t in by_node.values() {
            if !active_nodes.contains(&t.node_id) {
                continue;
            }
            if !terminal(t.desired()) && t.state() == TaskState::Running {
                running += 1;
            }
            if !self.done && node_count <= MAX_PROGRESS_BARS {
                if let Some(l) = task_line(truncate_id(&t.node_id).to_string(), t) {
                    out.push(l);
                }
            }
        }
        if !self.done {
            out.push(overall(running, node_count, self.rollback));
            if running == node_count {
                self.done = true;
            }
        }
        running == node_count
    }
}

/// What the waiting command asked for: it decides what a finished rollback means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `service create/update/scale`: a rollback by the managers means the change failed.
    Change,
    /// `service rollback`, `service update --rollback`: the rollback is the change.
    Rollback,
}

/// Follows the service's `UpdateStatus` between polls (Docker's `ServiceProgress` switch).
#[derive(Debug)]
pub struct StatusWatch {
    op: Operation,
    /// An update was seen in progress during this wait. A scale or a label change leaves
    /// the service's last `UpdateStatus` as it was: a rollback state met without it was
    /// left by an earlier operation and is no failure of this one.
    updating_seen: bool,
    rollback: bool,
    /// The managers' message when the rollback started.
    rollback_message: String,
}

impl StatusWatch {
    pub fn new(op: Operation) -> StatusWatch {
        StatusWatch {
            op,
            updating_seen: false,
            rollback: false,
            rollback_message: String::new(),
        }
    }

    /// The managers are rolling the service back: the overall line says so.
    pub fn rollback(&self) -> bool {
        self.rollback
    }

    /// Whether the rollback under way is the failure of the change this wait follows.
    fn change_rolled_back(&self) -> bool {
        self.op == Operation::Change && self.updating_seen && self.rollback
    }

    /// One poll of the service's status: the lines to print, or the error that ends the
    /// wait. `converged` is the task count's verdict of the previous poll.
    pub fn observe(
        &mut self,
        status: Option<&UpdateStatus>,
        converged: bool,
        out: &mut Vec<Line>,
    ) -> std::result::Result<(), String> {
        let Some(u) = status else {
            return Ok(());
        };
        match u.state() {
            UpdateState::Updating => {
                self.updating_seen = true;
                self.rollback = false;
            }
            UpdateState::Paused => return Err(format!("service update paused: {}", u.message)),
            UpdateState::RollbackStarted => {
                if !self.rollback && !u.message.is_empty() {
                    out.push(Line::text("rollback", u.message.clone()));
                    self.rollback_message = u.message.clone();
                }
                self.rollback = true;
            }
            UpdateState::RollbackPaused => {
                return Err(format!("service rollback paused: {}", u.message));
            }
            UpdateState::RollbackCompleted => {
                if self.updating_seen || self.op == Operation::Rollback {
                    self.rollback = true;
                }
                if self.change_rolled_back() && !converged {
                    return Err(format!("service rolled back: {}", u.message));
                }
            }
            UpdateState::Completed | UpdateState::Unknown => {}
        }
        Ok(())
    }

    /// The outcome once the tasks stayed converged for the monitor period: a change the
    /// managers rolled back fails with their message.
    pub fn finish(&self) -> std::result::Result<(), String> {
        if self.change_rolled_back() {
            return Err(format!("service rolled back: {}", self.rollback_message));
        }
        Ok(())
    }
}

/// Tasks made from the service's current spec (Docker's `_up-to-date` filter): the same
/// task spec, or created from the current spec version.
pub fn up_to_date(service: &Service, t: &Task) -> bool {
    if t.service_id != service.id && !t.service_id.is_empty() {
        return false;
    }
    let same_spec = match (&t.spec, service.spec.as_ref().and_then(|s| s.task.as_ref())) {
        (Some(a), Some(b)) => a == b,
        (None, None) => true,
        _ => false,
    };
    same_spec || (service.spec_version != 0 && t.spec_version == service.spec_version)
}

/// Draws progress lines: in place on a terminal, changed lines only otherwise.
pub struct Renderer<W: Write> {
    out: W,
    tty: bool,
    width: usize,
    order: Vec<String>,
    current: HashMap<String, Line>,
    printed: HashMap<String, String>,
    drawn_lines: usize,
    dirty: bool,
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, tty: bool, width: usize) -> Self {
        Renderer {
            out,
            tty,
            width,
            order: Vec::new(),
            current: HashMap::new(),
            printed: HashMap::new(),
            drawn_lines: 0,
            dirty: false,
        }
    }

    pub fn write(&mut self, line: Line) {
        if !self.current.contains_key(&line.id) {
            self.order.push(line.id.clone());
        }
        if self.current.get(&line.id) != Some(&line) {
            self.dirty = true;
        }
        self.current.insert(line.id.clone(), line);
    }

    /// Prints what changed since the last flush.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        if self.tty {
            let mut buf = String::new();
            if self.drawn_lines > 0 {
                buf.push_str(&format!("\x1b[{}A", self.drawn_lines));
            }
            for id in &self.order {
                if let Some(l) = self.current.get(id) {
                    buf.push_str("\x1b[2K");
                    buf.push_str(&l.render(true, self.width));
                    buf.push('\n');
                }
            }
            self.drawn_lines = self.order.len();
            self.out.write_all(buf.as_bytes())?;
        } else {
            for id in &self.order {
                let Some(l) = self.current.get(id) else {
                    continue;
                };
                let text = l.render(false, self.width);
                // A slot that has no task yet has nothing to say.
                if l.action.trim().is_empty() || self.printed.get(id) == Some(&text) {
                    continue;
                }
                writeln!(self.out, "{text}")?;
                self.printed.insert(id.clone(), text);
            }
        }
        self.out.flush()
    }

    /// A message outside the redrawn block (printed below it).
    pub fn message(&mut self, text: &str) -> std::io::Result<()> {
        writeln!(self.out, "{text}")?;
        if self.tty {
            // The block is no longer the last thing on screen: stop redrawing over it.
            self.drawn_lines = 0;
            self.order.clear();
            self.current.clear();
        }
        self.out.flush()
    }
}

/// Terminal width of stdout, or 200 (Docker's assumption) when unknown.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; fd 1 may not be a tty, then the
    // call fails and we fall back.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ as libc::Ioctl, &mut ws) == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    200
}

fn monitor_period() -> Duration {
    std::env::var("SWARM_CONVERGE_MONITOR")
        .ok()
        .and_then(|v| crate::opts::parse_go_duration(&v).ok())
        .unwrap_or(DEFAULT_MONITOR)
}

/// Polls until the service converges (every task of its current spec running for the
/// monitor period), drawing progress unless `quiet`, and following the update or rollback
/// the managers run for `op`. Like Docker it waits indefinitely; Ctrl-C leaves the
/// operation running in the background.
pub async fn wait_converged(
    client: &Client,
    service_id: &str,
    quiet: bool,
    op: Operation,
) -> Result<()> {
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let width = if tty { terminal_width() } else { 200 };
    let sink: Box<dyn Write> = if quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(stdout)
    };
    let mut r = Renderer::new(sink, tty, width);
    if client.service(service_id).await?.is_job() {
        return wait_job(client, service_id, &mut r).await;
    }
    let monitor = monitor_period();
    let mut updater: Option<Updater> = None;
    let mut watch = StatusWatch::new(op);
    let mut converged = false;
    let mut converged_at: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let service = client.service(service_id).await?;
        let mut lines = Vec::new();
        let seen = watch.observe(service.update_status.as_ref(), converged, &mut lines);
        for l in lines {
            r.write(l);
        }
        if let Err(e) = seen {
            r.flush()?;
            return Err(CliError::msg(e));
        }
        let up = updater.get_or_insert_with(|| Updater::new(&service));
        up.rollback = watch.rollback();
        if converged && converged_at.is_some_and(|at| at.elapsed() >= monitor) {
            r.write(Line::text("verify", "Service converged"));
            r.flush()?;
            return watch.finish().map_err(CliError::msg);
        }
        let tasks: Vec<Task> = client
            .tasks(ListTasksRequest {
                service_ids: vec![service.id.clone()],
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|t| up_to_date(&service, t))
            .collect();
        let active: HashSet<String> = client
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.state() != NodeState::Down)
            .map(|n| n.id)
            .collect();
        let mut lines = Vec::new();
        converged = up.update(&service, &tasks, &active, &mut lines);
        for l in lines {
            r.write(l);
        }
        if converged {
            let at = *converged_at.get_or_insert_with(Instant::now);
            if let Some(wait) = monitor.checked_sub(at.elapsed()) {
                r.write(Line::text(
                    "verify",
                    format!(
                        "Waiting {} seconds to verify that tasks are stable...",
                        wait.as_secs() + 1
                    ),
                ));
            }
        } else {
            if converged_at.is_some() {
                r.write(Line::text("verify", "Detected task failure"));
            }
            converged_at = None;
        }
        r.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut ctrl_c => {
                if !converged {
                    r.message("Operation continuing in background.")?;
                    r.message(&format!(
                        "Use `swarm service ps {service_id}` to check progress."
                    ))?;
                }
                return Ok(());
            }
        }
    }
}

/// Where a job's current iteration stands, from its tasks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub completed: u64,
    /// Tasks the job still waits for (starting, running, or about to be restarted).
    pub active: u64,
    /// Of those, running.
    pub running: u64,
    /// Tasks that failed and will not be restarted (restart policy exhausted).
    pub failed: u64,
    /// Completions wanted: a replicated job's total, a global job's tasks.
    pub total: u64,
}

impl JobProgress {
    pub fn of(service: &Service, tasks: &[Task]) -> JobProgress {
        let iteration = service.job_iteration();
        let mut p = JobProgress::default();
        for t in tasks
            .iter()
            .filter(|t| t.service_id == service.id && t.job_iteration == iteration)
        {
            if t.state() == TaskState::Complete {
                p.completed += 1;
            } else if t.desired() <= TaskState::Running {
                p.active += 1;
                if t.state() == TaskState::Running {
                    p.running += 1;
                }
            } else if t.desired() == TaskState::Complete {
                p.failed += 1;
            }
        }
        p.total = match service.replicated_job() {
            Some(j) => j.total_completions,
            None => p.completed + p.active + p.failed,
        };
        p
    }

    /// Every completion there (a global job: once it has tasks).
    pub fn done(&self) -> bool {
        self.total > 0 && self.completed >= self.total
    }

    /// Nothing left to run, and some tasks gave up.
    pub fn failed(&self) -> bool {
        self.failed > 0 && self.active == 0 && self.completed + self.failed >= self.total
    }
}

/// Follows a job (`service create/update` of a replicated or global job without `-d`) until
/// its current iteration completes, like Docker's job progress: `job progress: N out of M
/// complete`, `active tasks: R out of A tasks`. A job whose failed tasks exhausted their
/// restart policy ends the wait with an error.
async fn wait_job(
    client: &Client,
    service_id: &str,
    r: &mut Renderer<Box<dyn Write>>,
) -> Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let service = client.service(service_id).await?;
        let tasks = client
            .tasks(ListTasksRequest {
                service_ids: vec![service.id.clone()],
                ..Default::default()
            })
            .await?;
        let p = JobProgress::of(&service, &tasks);
        r.write(Line::text(
            "job progress",
            format!("{} out of {} complete", p.completed, p.total),
        ));
        r.write(Line::text(
            "active tasks",
            format!("{} out of {} tasks", p.running, p.active),
        ));
        if p.done() {
            r.write(Line::text("verify", "Job complete"));
            r.flush()?;
            return Ok(());
        }
        if p.failed() {
            r.flush()?;
            return Err(CliError::msg(format!(
                "job {} did not complete: {} of its tasks failed and their restart policy gave up; see swarm service ps {}",
                service.name(),
                p.failed,
                service.name()
            )));
        }
        r.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut ctrl_c => {
                r.message("Operation continuing in background.")?;
                r.message(&format!("Use `swarm service ps {service_id}` to check progress."))?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    fn task(slot: u64, node: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: format!("t{slot}{node}{}", state as i32),
            service_id: "s1".into(),
            slot,
            node_id: node.into(),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn replicated(n: u64) -> Service {
        Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedService {
                    replicas: n,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn nodes(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn replicated_progress_counts_running_slots() {
        use TaskState::*;
        let svc = replicated(2);
        let mut u = Updater::new(&svc);
        let mut out = Vec::new();
        let tasks = vec![
            task(1, "n1", Running, Running),
            task(2, "n1", Preparing, Running),
        ];
        assert!(!u.update(&svc, &tasks, &nodes(&["n1"]), &mut out));
        let texts: Vec<String> = out.iter().map(|l| l.render(false, 200)).collect();
        assert_eq!(
            texts,
            [
                "overall progress: 0 out of 2 tasks",
                "1/2:",
                "2/2:",
                "1/2: running",
                "2/2: preparing",
                "overall progress: 1 out of 2 tasks"
            ]
        );
        out.clear();
        let tasks = vec![
            task(1, "n1", Running, Running),
            task(2, "n1", Running, Running),
        ];
        assert!(u.update(&svc, &tasks, &nodes(&["n1"]), &mut out));
        assert_eq!(
            out.last().map(|l| l.render(false, 200)).as_deref(),
            Some("overall progress: 2 out of 2 tasks")
        );
        // Converged: no more task lines while it stays so.
        out.clear();
        assert!(u.update(&svc, &tasks, &nodes(&["n1"]), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn restarted_slot_prefers_the_live_task_and_errors_are_shown() {
        use TaskState::*;
        let svc = replicated(1);
        let mut u = Updater::new(&svc);
        let mut out = Vec::new();
        let mut pending = task(1, "", Pending, Running);
        pending.status.as_mut().unwrap().err =
            "no suitable node (scheduling constraints not satisfied on 1 node)".into();
        let tasks = vec![task(1, "n1", Failed, Shutdown), pending];
        assert!(!u.update(&svc, &tasks, &nodes(&["n1"]), &mut out));
        assert!(out.iter().any(|l| l.render(false, 200)
            == "1/1: no suitable node (scheduling constraints not satisfied on 1 node)"));
    }

    #[test]
    fn tasks_on_down_nodes_do_not_count() {
        use TaskState::*;
        let svc = replicated(1);
        let mut u = Updater::new(&svc);
        let mut out = Vec::new();
        assert!(!u.update(
            &svc,
            &[task(1, "gone", Running, Running)],
            &nodes(&["n1"]),
            &mut out
        ));
    }

    #[test]
    fn global_progress_counts_nodes_with_a_task() {
        use TaskState::*;
        let mut svc = replicated(0);
        svc.spec.as_mut().unwrap().mode = Some(service_spec::Mode::Global(GlobalService {}));
        let mut u = Updater::new(&svc);
        let mut out = Vec::new();
        assert!(!u.update(&svc, &[], &nodes(&["n1"]), &mut out));
        assert_eq!(
            out[0].render(false, 200),
            "overall progress: waiting for new tasks"
        );
        out.clear();
        let tasks = vec![
            task(0, "aaaaaaaaaaaaaaaa1", Running, Running),
            task(0, "bbbbbbbbbbbbbbbb2", Starting, Running),
        ];
        let active = nodes(&["aaaaaaaaaaaaaaaa1", "bbbbbbbbbbbbbbbb2"]);
        assert!(!u.update(&svc, &tasks, &active, &mut out));
        let texts: Vec<String> = out.iter().map(|l| l.render(false, 200)).collect();
        assert!(texts.contains(&"aaaaaaaaaaaa: running".to_string()));
        assert!(texts.contains(&"bbbbbbbbbbbb: starting".to_string()));
        assert_eq!(
            texts.last().map(String::as_str),
            Some("overall progress: 1 out of 2 tasks")
        );
    }

    #[test]
    fn bars_render_like_docker() {
        let l = Line {
            id: "1/2".into(),
            action: format!("{:<9}", "running"),
            progress: Some(9),
        };
        assert_eq!(
            l.render(true, 200),
            "1/2: running   [==================================================>] "
        );
        let p = Line {
            id: "1/2".into(),
            action: format!("{:<9}", "pending"),
            progress: Some(3),
        };
        assert_eq!(
            p.render(true, 200),
            format!("1/2: pending   [{}>{}] ", "=".repeat(16), " ".repeat(34))
        );
        // Narrow terminal: no bar.
        assert_eq!(l.render(true, 80), "1/2: running   ");
        assert_eq!(l.render(false, 200), "1/2: running");
    }

    #[test]
    fn non_tty_prints_changed_lines_only() {
        let mut buf = Vec::new();
        {
            let mut r = Renderer::new(&mut buf, false, 200);
            r.write(overall(0, 1, false));
            r.write(Line::text("1/1", " "));
            r.flush().unwrap();
            r.write(overall(0, 1, false));
            r.flush().unwrap();
            r.write(overall(1, 1, false));
            r.write(Line::text("verify", "Service converged"));
            r.flush().unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "overall progress: 0 out of 1 tasks\noverall progress: 1 out of 1 tasks\nverify: Service converged\n"
        );
    }

    #[test]
    fn tty_redraws_the_block_in_place() {
        let mut buf = Vec::new();
        {
            let mut r = Renderer::new(&mut buf, true, 80);
            r.write(overall(0, 1, false));
            r.flush().unwrap();
            r.write(overall(1, 1, false));
            r.flush().unwrap();
        }
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(
            s,
            "\x1b[2Koverall progress: 0 out of 1 tasks \n\x1b[1A\x1b[2Koverall progress: 1 out of 1 tasks \n"
        );
    }

    #[test]
    fn up_to_date_uses_spec_or_version() {
        let mut svc = replicated(1);
        svc.spec_version = 3;
        svc.spec.as_mut().unwrap().task = Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "nginx:2".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut t = task(1, "n1", TaskState::Running, TaskState::Running);
        t.spec = svc.spec.as_ref().unwrap().task.clone();
        t.spec_version = 1;
        assert!(up_to_date(&svc, &t), "same spec after a scale");
        t.spec = Some(TaskSpec::default());
        assert!(!up_to_date(&svc, &t), "old image");
        t.spec_version = 3;
        assert!(up_to_date(&svc, &t), "created from the current version");
    }

    fn status(state: UpdateState, message: &str) -> UpdateStatus {
        UpdateStatus {
            state: state as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    /// Drives the watch and the updater through polls of (status, tasks) as the wait loop
    /// does, and returns the non-terminal output and how the wait ended (None: still going).
    fn follow(
        op: Operation,
        polls: &[(UpdateStatus, Vec<Task>)],
    ) -> (String, Option<std::result::Result<(), String>>) {
        let svc = replicated(2);
        let mut up = Updater::new(&svc);
        let mut watch = StatusWatch::new(op);
        let mut buf = Vec::new();
        let mut ended = None;
        {
            let mut r = Renderer::new(&mut buf, false, 200);
            let mut converged = false;
            for (st, tasks) in polls {
                let mut lines = Vec::new();
                let seen = watch.observe(Some(st), converged, &mut lines);
                lines.into_iter().for_each(|l| r.write(l));
                if let Err(e) = seen {
                    r.flush().unwrap();
                    ended = Some(Err(e));
                    break;
                }
                up.rollback = watch.rollback();
                let mut lines = Vec::new();
                converged = up.update(&svc, tasks, &nodes(&["n1"]), &mut lines);
                lines.into_iter().for_each(|l| r.write(l));
                r.flush().unwrap();
            }
            if ended.is_none() && converged {
                r.write(Line::text("verify", "Service converged"));
                r.flush().unwrap();
                ended = Some(watch.finish());
            }
        }
        (String::from_utf8(buf).unwrap(), ended)
    }

    const FAILED: &str = "update rolled back due to failure or early termination of task t1";

    #[test]
    fn automatic_rollback_of_an_update_is_followed_and_fails_it() {
        use TaskState::*;
        use UpdateState::*;
        let polls = vec![
            (
                status(Updating, "update in progress"),
                vec![task(1, "n1", Starting, Running)],
            ),
            (status(RollbackStarted, FAILED), vec![]),
            (
                status(RollbackStarted, FAILED),
                vec![
                    task(1, "n1", Running, Running),
                    task(2, "n1", Preparing, Running),
                ],
            ),
            (
                status(RollbackCompleted, "rollback completed"),
                vec![
                    task(1, "n1", Running, Running),
                    task(2, "n1", Running, Running),
                ],
            ),
        ];
        let (out, ended) = follow(Operation::Change, &polls);
        assert_eq!(
            out,
            // Each poll prints the lines that changed, in the order the block first had them.
            "overall progress: 0 out of 2 tasks\n\
             1/2: starting\n\
             overall progress: rolling back update: 0 out of 2 tasks\n\
             rollback: update rolled back due to failure or early termination of task t1\n\
             overall progress: rolling back update: 1 out of 2 tasks\n\
             1/2: running\n\
             2/2: preparing\n"
        );
        assert_eq!(
            ended,
            Some(Err("service rolled back: rollback completed".into())),
            "the managers finished the rollback before the tasks were seen converged"
        );

        // Converged on the old spec before the managers wrote rollback_completed.
        let mut polls = polls;
        polls[3].0 = status(RollbackStarted, FAILED);
        let (out, ended) = follow(Operation::Change, &polls);
        assert!(
            out.ends_with(
                "overall progress: rolling back update: 2 out of 2 tasks\n\
                 2/2: running\n\
                 verify: Service converged\n"
            ),
            "{out}"
        );
        assert_eq!(ended, Some(Err(format!("service rolled back: {FAILED}"))));
    }

    #[test]
    fn manual_rollback_is_followed_to_convergence() {
        use TaskState::*;
        use UpdateState::*;
        let running = vec![
            task(1, "n1", Running, Running),
            task(2, "n1", Running, Running),
        ];
        let polls = vec![
            (
                status(RollbackStarted, "manually requested rollback"),
                vec![task(1, "n1", Running, Running)],
            ),
            (
                status(RollbackStarted, "manually requested rollback"),
                running.clone(),
            ),
            (status(RollbackCompleted, "rollback completed"), running),
        ];
        let (out, ended) = follow(Operation::Rollback, &polls);
        assert_eq!(
            out,
            "rollback: manually requested rollback\n\
             overall progress: rolling back update: 1 out of 2 tasks\n\
             1/2: running\n\
             overall progress: rolling back update: 2 out of 2 tasks\n\
             2/2: running\n\
             verify: Service converged\n"
        );
        assert_eq!(ended, Some(Ok(())));
    }

    #[test]
    fn paused_update_and_rollback_end_with_dockers_errors() {
        use UpdateState::*;
        let (_, ended) = follow(
            Operation::Change,
            &[(
                status(
                    Paused,
                    "update paused due to failure or early termination of task t1",
                ),
                vec![],
            )],
        );
        assert_eq!(
            ended,
            Some(Err(
                "service update paused: update paused due to failure or early termination of task t1".into()
            ))
        );
        let (out, ended) = follow(
            Operation::Rollback,
            &[
                (
                    status(RollbackStarted, "manually requested rollback"),
                    vec![],
                ),
                (
                    status(RollbackPaused, "rollback paused due to failure"),
                    vec![],
                ),
            ],
        );
        assert!(
            out.starts_with("rollback: manually requested rollback\n"),
            "{out}"
        );
        assert_eq!(
            ended,
            Some(Err(
                "service rollback paused: rollback paused due to failure".into()
            ))
        );
    }

    #[test]
    fn a_status_left_by_an_earlier_rollback_is_no_failure_of_a_scale() {
        use TaskState::*;
        use UpdateState::*;
        let running = vec![
            task(1, "n1", Running, Running),
            task(2, "n1", Running, Running),
        ];
        let (out, ended) = follow(
            Operation::Change,
            &[(status(RollbackCompleted, "rollback completed"), running)],
        );
        assert_eq!(
            out,
            "overall progress: 2 out of 2 tasks\n\
             1/2: running\n\
             2/2: running\n\
             verify: Service converged\n"
        );
        assert_eq!(ended, Some(Ok(())));
    }

    #[test]
    fn job_progress_counts_the_current_iteration() {
        let mut job = Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                mode: Some(service_spec::Mode::ReplicatedJob(ReplicatedJob {
                    max_concurrent: 2,
                    total_completions: 3,
                })),
                ..Default::default()
            }),
            job_status: Some(JobStatus {
                job_iteration: 2,
                last_execution: 0,
            }),
            ..Default::default()
        };
        let t = |state, desired, iteration| {
            let mut t = task(1, "n1", state, desired);
            t.job_iteration = iteration;
            t
        };
        use TaskState::*;
        let mut tasks = vec![
            t(Complete, Complete, 2),
            t(Running, Running, 2),
            t(Complete, Shutdown, 1),
        ];
        let p = JobProgress::of(&job, &tasks);
        assert_eq!(
            p,
            JobProgress {
                completed: 1,
                active: 1,
                running: 1,
                failed: 0,
                total: 3
            }
        );
        assert!(!p.done() && !p.failed());
        tasks[1] = t(Failed, Complete, 2);
        tasks.push(t(Failed, Complete, 2));
        let p = JobProgress::of(&job, &tasks);
        assert!(p.failed(), "{p:?}: nothing left to run, 2 gave up");
        tasks[1] = t(Complete, Complete, 2);
        tasks[3] = t(Complete, Complete, 2);
        assert!(JobProgress::of(&job, &tasks).done());
        // A global job: complete once every task of the iteration is.
        job.spec.as_mut().unwrap().mode = Some(service_spec::Mode::GlobalJob(GlobalJob {}));
        assert!(JobProgress::of(&job, &tasks).done());
        assert!(!JobProgress::of(&job, &[]).done(), "no task yet");
    }
}
