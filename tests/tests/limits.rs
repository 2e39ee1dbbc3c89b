//! End-to-end: what a low-privilege node can make the managers write and hold is bounded.
//! Real `test-agent` processes on 127.0.0.N; the "worker" is a test client holding a real
//! worker certificate from a join, talking to the leader's real dispatcher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::dispatcher_client::DispatcherClient;
use proto::{
    HeartbeatRequest, NodeDescription, SessionRequest, TaskState, TaskStatus, TaskStatusUpdate,
    UpdateTaskStatusRequest,
};
use tests::{running, wait_for, AgentClient, Cluster};
use tonic::transport::Channel;

/// Status updates the worker sends, and the size of each one's message.
const UPDATES: usize = 10_000;
const MESSAGE_BYTES: usize = 1 << 20;
/// Updates per request (1 MiB and a little: under the dispatcher's 2 MiB request limit),
/// and requests in flight at once.
const PER_REQUEST: usize = 1;
const IN_FLIGHT: usize = 48;
/// The bounds asserted: growth of the leader's Raft database and its resident memory, and
/// the slowest Control API answer during the flood.
const MAX_DB_GROWTH: u64 = 64 << 20;
const MAX_RSS: u64 = 512 << 20;
const MAX_CONTROL_LATENCY: Duration = Duration::from_secs(5);

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

#[derive(Default, Debug)]
struct Peaks {
    db: u64,
    rss: u64,
    control: Duration,
    control_calls: usize,
    control_failures: Vec<String>,
}

#[test]
fn a_worker_flooding_status_updates_leaves_the_raft_log_and_memory_bounded() {
    let mut c = Cluster::formed(2, 27301, 1);
    let m = c.node(0);
    m.create_service(&[
        "--name",
        "flood",
        "--constraint",
        "node.role==worker",
        "sim/app",
    ]);
    wait_for(Duration::from_secs(30), || {
        m.tasks("flood").is_ok_and(|t| running(&t).len() == 1)
    })
    .expect("the task runs on the worker");
    let task = running(&m.tasks("flood").unwrap())[0].clone();
    let service_id = task.service_id.clone();
    let worker_id = task.node_id.clone();

    // The worker's agent stops; the test speaks for the worker with its certificate.
    c.nodes[1].stop();
    let m = c.node(0);
    let (cert, key, root) = c.node(1).cert_paths();
    let cfg = swarm_manager::tls::client_config(
        &tests::read(&root),
        Some((&tests::read(&cert), &tests::read(&key))),
    )
    .unwrap();
    let addr = m.addr();
    let db = m.data_root.join("raft").join("raft.redb");
    let pid = m.pid().expect("the manager runs");
    let db_before = file_size(&db);
    let rss_before = rss_bytes(pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let channels: Vec<Channel> = (0..4)
        .map(|_| {
            let _guard = rt.enter();
            swarm_manager::tls::channel(&addr, cfg.clone())
        })
        .collect();
    let client = |i: usize| {
        DispatcherClient::new(channels[i % channels.len()].clone())
            .max_encoding_message_size(8 << 20)
    };

    // A description above the bound is refused with a clear error.
    let mut huge = NodeDescription {
        hostname: "node2".into(),
        ..Default::default()
    };
    huge.engine_labels
        .insert("big".into(), "x".repeat(MESSAGE_BYTES));
    let e = rt
        .block_on(client(0).session(SessionRequest {
            description: Some(huge),
            data_path_addr: String::new(),
        }))
        .expect_err("a 1 MiB description is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("above the limit"), "{}", e.message());

    // Requests above the dispatcher's limit are refused before they are decoded, and the
    // Raft service refuses a worker, whatever the size of its request.
    let e = rt
        .block_on(client(0).update_task_status(UpdateTaskStatusRequest {
            session_id: "none".into(),
            updates: vec![TaskStatusUpdate {
                task_id: task.id.clone(),
                status: Some(TaskStatus {
                    message: "x".repeat(3 * MESSAGE_BYTES),
                    ..Default::default()
                }),
            }],
        }))
        .expect_err("a 3 MiB request is refused");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    let e = rt
        .block_on(
            proto::raft_client::RaftClient::new(channels[0].clone())
                .max_encoding_message_size(64 << 20)
                .append_entries(proto::RaftPayload {
                    data: vec![0; 32 << 20],
                }),
        )
        .expect_err("a worker cannot call Raft");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A real session, kept alive with heartbeats.
    let session_id = rt.block_on(async {
        let mut stream = client(0)
            .session(SessionRequest {
                description: Some(NodeDescription {
                    hostname: "node2".into(),
                    ..Default::default()
                }),
                data_path_addr: String::new(),
            })
            .await
            .expect("the worker opens a session")
            .into_inner();
        let first = stream.message().await.unwrap().expect("a session message");
        tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
        first.session_id
    });
    {
        let mut hb = client(1);
        let session_id = session_id.clone();
        rt.spawn(async move {
            loop {
                let _ = hb
                    .heartbeat(HeartbeatRequest {
                        session_id: session_id.clone(),
                        port_conflicts: vec![],
                    })
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    // Meanwhile: the leader's database size, its memory, and a Control API read every
    // 500 ms. Past a bound the flood stops early (so that an unbounded manager fails fast).
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = Arc::new(Mutex::new(Peaks::default()));
    let mut sent = 0;
    let mut flood = Duration::ZERO;
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = m.services();
                let took = t.elapsed();
                let mut p = peaks.lock().unwrap();
                p.db = p.db.max(file_size(&db));
                p.rss = p.rss.max(rss_bytes(pid));
                p.control = p.control.max(took);
                p.control_calls += 1;
                if let Err(e) = r {
                    p.control_failures.push(format!("{e:#}"));
                }
                if p.db > db_before + MAX_DB_GROWTH || p.rss > MAX_RSS {
                    drop(p);
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(500));
            }
        });

        let started = Instant::now();
        sent = rt.block_on(async {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut senders = tokio::task::JoinSet::new();
            for s in 0..IN_FLIGHT {
                let mut cl = client(s);
                let next = next.clone();
                let stop = stop.clone();
                let session_id = session_id.clone();
                let task_id = task.id.clone();
                senders.spawn(async move {
                    let mut sent = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let first = next.fetch_add(PER_REQUEST, Ordering::SeqCst);
                        if first >= UPDATES {
                            break;
                        }
                        let updates = (first..(first + PER_REQUEST).min(UPDATES))
                            .map(|i| {
                                let mut message = format!("update {i} ");
                                message.push_str(&"m".repeat(MESSAGE_BYTES - message.len()));
                                TaskStatusUpdate {
                                    task_id: task_id.clone(),
                                    status: Some(TaskStatus {
                                        state: TaskState::Running as i32,
                                        message,
                                        ..Default::default()
                                    }),
                                }
                            })
                            .collect::<Vec<_>>();
                        let n = updates.len();
                        cl.update_task_status(UpdateTaskStatusRequest {
                            session_id: session_id.clone(),
                            updates,
                        })
                        .await
                        .expect("the dispatcher takes a status update");
                        sent += n;
                    }
                    sent
                });
            }
            let mut sent = 0;
            while let Some(n) = senders.join_next().await {
                sent += n.unwrap();
            }
            sent
        });
        flood = started.elapsed();

        // The last word is a failure: once acknowledged, the store has it.
        rt.block_on(client(0).update_task_status(UpdateTaskStatusRequest {
            session_id: session_id.clone(),
            updates: vec![TaskStatusUpdate {
                task_id: task.id.clone(),
                status: Some(TaskStatus {
                    state: TaskState::Failed as i32,
                    err: "exit 1".into(),
                    ..Default::default()
                }),
            }],
        }))
        .expect("the failure is acknowledged");
        stop.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
    });
    let p = peaks.lock().unwrap();
    println!(
        "{sent} updates of {} KiB in {:.1} s: leader's raft db {} -> peak {} KiB (+{} KiB), \
         leader RSS {} -> peak {} MiB, slowest Control API answer {} ms over {} calls",
        MESSAGE_BYTES >> 10,
        flood.as_secs_f64(),
        db_before >> 10,
        p.db >> 10,
        p.db.saturating_sub(db_before) >> 10,
        rss_before >> 20,
        p.rss >> 20,
        p.control.as_millis(),
        p.control_calls,
    );
    assert!(
        p.db <= db_before + MAX_DB_GROWTH,
        "the raft database grew from {db_before} to {} bytes",
        p.db
    );
    assert!(p.rss <= MAX_RSS, "the leader's RSS reached {} bytes", p.rss);
    assert_eq!(sent, UPDATES, "every update was sent and acknowledged");
    assert!(
        p.control_failures.is_empty(),
        "Control API calls failed: {:?}",
        p.control_failures
    );
    assert!(
        p.control_calls >= 2,
        "the Control API was not read during the flood"
    );
    assert!(
        p.control <= MAX_CONTROL_LATENCY,
        "a Control API read took {:?}",
        p.control
    );

    let stored = m
        .tasks(&service_id)
        .unwrap()
        .into_iter()
        .find(|t| t.id == task.id)
        .expect("the task is still there");
    let status = stored.status.unwrap_or_default();
    assert_eq!(status.state, TaskState::Failed as i32, "{status:?}");
    assert_eq!(status.err, "exit 1");
    assert_eq!(stored.node_id, worker_id);
}
