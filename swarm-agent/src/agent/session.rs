//! Sessions with the leader's dispatcher, one after another: each is opened (redirected to
//! the leader when needed), then runs heartbeats, assignments into the worker, the network
//! state stream, status reports and log subscriptions side by side until one of them ends it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::dispatcher_client::DispatcherClient;
use proto::{AssignmentsRequest, HeartbeatRequest, NodeRole, SessionMessage, SessionRequest};
use rand::Rng;
use swarm_manager::tls;
use tonic::Status;

use super::addresses::host_of;
use super::Agent;
use crate::network::stream::StreamEnd;

enum SessionEnd {
    /// The manager is not the leader and said who is.
    Redirect(String),
    Failed(String),
}

impl From<Status> for SessionEnd {
    fn from(s: Status) -> Self {
        if let Some(addr) = s
            .metadata()
            .get(swarm_manager::api::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            return SessionEnd::Redirect(addr.to_string());
        }
        SessionEnd::Failed(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Keeps a session with the leader's dispatcher open, reconnecting as needed.
pub(super) async fn session_loop(agent: Arc<Agent>) {
    let mut hint: Option<String> = None;
    let mut next = 0usize;
    loop {
        let Some((state, creds)) = agent.current().await else {
            return;
        };
        let addr = match hint.take() {
            Some(a) => a,
            None => {
                if state.managers.is_empty() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                next = next.wrapping_add(1);
                state.managers[next % state.managers.len()].clone()
            }
        };
        let cfg =
            match tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem))) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("node credentials unusable: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
        let data_path = host_of(&state.advertise_addr);
        if let (Some(n), Ok(ip)) = (&agent.networking, data_path.parse::<std::net::Ipv4Addr>()) {
            n.bring_up(&state.node_id, ip);
        }
        match run_session(&agent, tls::channel(&addr, cfg), data_path).await {
            SessionEnd::Redirect(leader) => {
                tracing::debug!(%addr, %leader, "redirected to the leader");
                hint = Some(leader);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            SessionEnd::Failed(e) => {
                tracing::info!(%addr, "session ended: {e}");
                let ms = rand::rng().random_range(300..800);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}

async fn run_session(
    agent: &Arc<Agent>,
    ch: tonic::transport::Channel,
    data_path_addr: String,
) -> SessionEnd {
    let mut client = DispatcherClient::new(ch.clone());
    let mut stream = match client
        .session(SessionRequest {
            description: Some(agent.description()),
            data_path_addr,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return s.into(),
    };
    let first = match stream.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return SessionEnd::Failed("session stream closed".into()),
        Err(s) => return s.into(),
    };
    let session_id = first.session_id.clone();
    tracing::info!(session = %session_id, "session established");
    agent.on_session_message(&first).await;

    let heartbeat = {
        let mut c = client.clone();
        let sid = session_id.clone();
        let networking = agent.networking.clone();
        async move {
            loop {
                match c
                    .heartbeat(HeartbeatRequest {
                        session_id: sid.clone(),
                        port_conflicts: networking
                            .as_ref()
                            .map(|n| n.port_conflicts())
                            .unwrap_or_default(),
                    })
                    .await
                {
                    Ok(r) => {
                        let ms = r.into_inner().period_ms.max(100) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Err(s) => return SessionEnd::from(s),
                }
            }
        }
    };
    let assignments = {
        let mut c = client.clone();
        let sid = session_id.clone();
        let worker = agent.worker.clone();
        async move {
            let mut s = match c.assignments(AssignmentsRequest { session_id: sid }).await {
                Ok(s) => s.into_inner(),
                Err(s) => return SessionEnd::from(s),
            };
            loop {
                match s.message().await {
                    Ok(Some(m)) => worker.apply(m),
                    Ok(None) => return SessionEnd::Failed("assignments stream closed".into()),
                    Err(st) => return SessionEnd::from(st),
                }
            }
        }
    };
    // The node's network view; an older leader without it leaves the session as it is.
    let network = {
        let c = client.clone();
        let sid = session_id.clone();
        let agent = agent.clone();
        async move {
            match crate::network::stream::follow(c, sid, &agent.network, &agent.network_state_bytes)
                .await
            {
                StreamEnd::Ended(Some(st)) => SessionEnd::from(st),
                StreamEnd::Ended(None) => SessionEnd::Failed("network state stream closed".into()),
                StreamEnd::Unsupported(why) => {
                    if !agent
                        .network_state_unsupported
                        .swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "the leader does not serve network state ({why}); this node's network view stays as it is until a manager that does leads"
                        );
                    } else {
                        tracing::debug!("the leader does not serve network state ({why})");
                    }
                    std::future::pending().await
                }
            }
        }
    };
    let status = {
        let c = client.clone();
        let sid = session_id.clone();
        let worker = agent.worker.clone();
        async move { SessionEnd::from(worker.reports().send(c, sid).await) }
    };
    // `swarm service logs`: the leader's log subscriptions, on the session's channel and
    // certificate; it never ends by itself and stops with the session.
    let logs = crate::logs::publisher::serve(agent.cfg.data_root.join("tasks"), ch);
    let messages = {
        let agent = agent.clone();
        async move {
            loop {
                match stream.message().await {
                    Ok(Some(m)) => agent.on_session_message(&m).await,
                    Ok(None) => return SessionEnd::Failed("session stream closed".into()),
                    Err(s) => return SessionEnd::from(s),
                }
            }
        }
    };
    tokio::select! {
        e = heartbeat => e,
        e = assignments => e,
        e = network => e,
        e = status => e,
        e = messages => e,
        never = logs => match never {},
    }
}

impl Agent {
    /// Session messages: remember the managers; follow role changes; renew the certificate
    /// when the roots nodes trust changed (a root rotation started or finished).
    async fn on_session_message(self: &Arc<Self>, msg: &SessionMessage) {
        let managers: Vec<String> = msg.managers.iter().map(|m| m.addr.clone()).collect();
        {
            let mut inner = self.inner.lock().await;
            if !msg.root_ca.is_empty() {
                *self.session_root.lock().unwrap_or_else(|e| e.into_inner()) = msg.root_ca.clone();
                if inner
                    .creds
                    .as_ref()
                    .is_some_and(|c| c.root_ca_pem != msg.root_ca)
                {
                    tracing::info!("the swarm's root CA changed: renewing the node certificate");
                    self.renew_now.notify_one();
                }
            }
            if let Some(state) = inner.state.as_mut() {
                if !managers.is_empty() && state.managers != managers {
                    state.managers = managers;
                    if let Err(e) = self.paths.save_state(state) {
                        tracing::warn!("saving the manager list: {e}");
                    }
                }
            }
            self.publish(&inner);
        }
        if let Some(node) = &msg.node {
            let want = node.role_enum();
            let previous = self
                .wanted_role
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(want);
            let have = self
                .snapshot()
                .state
                .map(|s| s.is_manager())
                .unwrap_or(false);
            if (want == NodeRole::Manager) != have && previous != Some(want) {
                tokio::spawn(self.clone().follow_role(want));
            }
        }
    }
}
