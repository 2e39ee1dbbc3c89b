//! The clients of a fault run: threads that write and read services through every manager's
//! Control API (each bound to one manager's socket) while faults come and go, every
//! operation recorded in the [`History`].
//!
//! A key is one service, created once under a unique name, then read and bumped: a bump
//! reads the service (a recorded `Read`: version and counter) and updates its counter label
//! naming that version (a recorded `Cas`). After [`OPS_PER_KEY`] operations, or
//! [`INDETERMINATE_PER_KEY`] indeterminate ones, a key is retired and a new one created; there
//! are about as many keys in use as clients. This keeps each key's history small and its
//! concurrent writers few for the checker, whose search grows exponentially with them (an
//! indeterminate operation is a writer concurrent with everything after it).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::control_client::ControlClient;
use proto::{
    service_spec, ContainerSpec, CreateServiceRequest, GetServiceRequest, ReplicatedService,
    ServiceSpec, TaskSpec, UpdateServiceRequest,
};
use tonic::Code;

use super::history::{History, Op, Record, Ret};
use super::schedule::Rng;
use crate::client::socket_channel;

/// Operations on one key before it is retired.
pub const OPS_PER_KEY: usize = 24;
/// Indeterminate operations on one key before it is retired.
pub const INDETERMINATE_PER_KEY: usize = 3;
/// Keys in use at once (the fault runs have six clients).
const ACTIVE_KEYS: usize = 6;
/// An operation that has not completed by then is indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The counter label of a workload service.
pub const COUNTER: &str = "faults.counter";

/// A replicated service of no replicas of the simulated executor's idle image: what the
/// workload's keys are, and a write that costs the cluster nothing but its Raft entry.
pub fn idle_spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "sim/idle".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(service_spec::Mode::Replicated(ReplicatedService {
            replicas: 0,
        })),
        ..Default::default()
    }
}

/// The keys shared by the clients of one run.
struct Keys {
    prefix: String,
    next: u64,
    /// (name, operations started on it, indeterminate ones)
    active: Vec<(String, usize, usize)>,
}

/// What the clients share: the history, the keys, process ids, the stop flag.
pub struct Workload {
    pub history: Arc<History>,
    keys: Mutex<Keys>,
    next_process: AtomicU64,
    stop: AtomicBool,
}

/// What a client does next.
enum Next {
    Create(String),
    Bump(String),
    Read(String),
}

impl Workload {
    pub fn new(seed: u64) -> Arc<Workload> {
        Arc::new(Workload {
            history: Arc::new(History::default()),
            keys: Mutex::new(Keys {
                prefix: format!("fk{seed}"),
                next: 0,
                active: Vec::new(),
            }),
            next_process: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::SeqCst)
    }

    fn next(&self, rng: &mut Rng) -> Next {
        let mut k = self.keys.lock().expect("keys lock");
        k.active
            .retain(|(_, n, lost)| *n < OPS_PER_KEY && *lost < INDETERMINATE_PER_KEY);
        if k.active.len() < ACTIVE_KEYS {
            let name = format!("{}-{}", k.prefix, k.next);
            k.next += 1;
            k.active.push((name.clone(), 1, 0));
            return Next::Create(name);
        }
        let i = rng.pick(k.active.len());
        let entry = &mut k.active[i];
        // A bump is two operations (its read and its update).
        let bump = rng.pick(2) == 0;
        entry.1 += if bump { 2 } else { 1 };
        if bump {
            Next::Bump(entry.0.clone())
        } else {
            Next::Read(entry.0.clone())
        }
    }

    /// Starts a client thread bound to the manager whose socket is `socket` (named `via`).
    pub fn spawn_client(
        self: &Arc<Self>,
        via: String,
        socket: PathBuf,
        seed: u64,
    ) -> std::thread::JoinHandle<()> {
        let w = self.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(w.client(via, socket, seed));
        })
    }

    async fn client(self: Arc<Self>, via: String, socket: PathBuf, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut process = self.new_process();
        while !self.stop.load(Ordering::SeqCst) {
            let mut c = match socket_channel(socket.clone()).await {
                Ok(ch) => ControlClient::new(ch),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let done = match self.next(&mut rng) {
                Next::Create(name) => self.create(&mut c, &via, process, &name).await,
                Next::Read(name) => self.read(&mut c, &via, process, &name).await.is_some(),
                Next::Bump(name) => match self.read(&mut c, &via, process, &name).await {
                    None => false,
                    Some(None) => true,
                    Some(Some((service, counter))) => {
                        self.cas(&mut c, &via, process, service, counter).await
                    }
                },
            };
            if !done {
                // Indeterminate: this process may still have an operation in flight.
                process = self.new_process();
            }
            tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
        }
    }

    fn start(&self, key: &str, process: u64, op: Op, via: &str) -> Record {
        Record {
            key: key.to_string(),
            process,
            op,
            invoked: Instant::now(),
            completed: None,
            via: via.to_string(),
        }
    }

    /// Records `r` completed with `ret` (or indeterminate when None); whether it completed.
    fn finish(&self, mut r: Record, ret: Option<Ret>) -> bool {
        let done = ret.is_some();
        if !done {
            let mut k = self.keys.lock().expect("keys lock");
            if let Some(entry) = k.active.iter_mut().find(|(name, ..)| *name == r.key) {
                entry.2 += 1;
            }
        }
        r.completed = ret.map(|ret| (Instant::now(), ret));
        self.history.record(r);
        done
    }

    async fn create(&self, c: &mut Client, via: &str, process: u64, name: &str) -> bool {
        let r = self.start(name, process, Op::Create, via);
        let mut spec = idle_spec(name);
        spec.labels = [(COUNTER.to_string(), "0".to_string())].into();
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            c.create_service(CreateServiceRequest { spec: Some(spec) }),
        )
        .await;
        let ret = match res {
            Ok(Ok(_)) => Some(Ret::Created),
            Ok(Err(s)) if s.code() == Code::AlreadyExists => Some(Ret::AlreadyExists),
            _ => None,
        };
        self.finish(r, ret)
    }

    /// A recorded read: None when indeterminate, Some(None) when not found (or without a
    /// counter), else the service and its counter.
    async fn read(
        &self,
        c: &mut Client,
        via: &str,
        process: u64,
        name: &str,
    ) -> Option<Option<(proto::Service, u64)>> {
        let r = self.start(name, process, Op::Read, via);
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            c.get_service(GetServiceRequest {
                service_id: name.to_string(),
            }),
        )
        .await;
        let (ret, out) = match res {
            Ok(Ok(s)) => {
                let s = s.into_inner();
                let counter = s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.labels.get(COUNTER))
                    .and_then(|v| v.parse::<u64>().ok());
                match counter {
                    Some(n) => (Some(Ret::Value(n)), Some(Some((s, n)))),
                    // A service without a readable counter: no value of the model; an
                    // impossible return that the checker refuses.
                    None => (Some(Ret::Value(u64::MAX)), Some(None)),
                }
            }
            Ok(Err(s)) if s.code() == Code::NotFound => (Some(Ret::NotFound), Some(None)),
            _ => (None, None),
        };
        self.finish(r, ret);
        out
    }

    async fn cas(
        &self,
        c: &mut Client,
        via: &str,
        process: u64,
        service: proto::Service,
        counter: u64,
    ) -> bool {
        let name = service
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let r = self.start(&name, process, Op::Cas { expect: counter }, via);
        // The spec as read, with the counter bumped, at the version read.
        let version = service.meta.as_ref().map(|m| m.version).unwrap_or(0);
        let mut spec = service.spec.unwrap_or_default();
        spec.labels
            .insert(COUNTER.to_string(), (counter + 1).to_string());
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            c.update_service(UpdateServiceRequest {
                service_id: service.id,
                service_version: version,
                spec: Some(spec),
                rollback: false,
            }),
        )
        .await;
        let ret = match res {
            Ok(Ok(_)) => Some(Ret::CasOk),
            Ok(Err(s)) if s.code() == Code::FailedPrecondition => Some(Ret::CasMismatch),
            Ok(Err(s)) if s.code() == Code::NotFound => Some(Ret::NotFound),
            _ => None,
        };
        self.finish(r, ret)
    }
}

type Client = ControlClient<tonic::transport::Channel>;
