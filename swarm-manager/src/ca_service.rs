//! The `CA` and `NodeCA` gRPC services: root certificate for anyone, node certificates
//! for holders of a join token (new nodes) or of a valid node certificate (renewals).

use std::time::Duration;

use proto::{
    GetRootCaCertificateRequest, GetRootCaCertificateResponse, IssueNodeCertificateRequest,
    IssueNodeCertificateResponse, NodeRole,
};
use swarm_common::id::new_id;
use tonic::{Request, Response, Status};

use crate::api::propose_status;
use crate::ca::{
    issuer_info_of_ca, parse_join_token, signing_root, tokens_equal, trust_bundle, RootCa,
    DEFAULT_NODE_CERT_VALIDITY,
};
use crate::router::{no_leader, Route, Router};
use crate::store::{Object, Op, Store};
use crate::tls;

#[derive(Clone)]
pub struct CaService {
    store: Store,
    router: Router,
}

impl CaService {
    pub fn new(store: Store, router: Router) -> Self {
        CaService { store, router }
    }

    /// The cluster's root CA, the id and the node certificate validity.
    fn cluster_ca(&self) -> Result<(String, proto::RootCa, Duration), Status> {
        let state = self.store.read();
        let cluster = state.cluster().ok_or_else(no_cluster)?;
        let root = cluster.root_ca.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "cluster {} has no root CA in the store; re-initialize the swarm",
                cluster.id
            ))
        })?;
        let expiry_ms = cluster
            .spec
            .as_ref()
            .and_then(|s| s.ca_config.as_ref())
            .map_or(0, |c| c.node_cert_expiry_ms);
        let validity = if expiry_ms > 0 {
            Duration::from_millis(expiry_ms as u64)
        } else {
            DEFAULT_NODE_CERT_VALIDITY
        };
        Ok((cluster.id.clone(), root, validity))
    }

    async fn issue_local(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<IssueNodeCertificateResponse, Status> {
        let (cluster_id, root, validity) = self.cluster_ca()?;
        let signer = Signer::of(&root)?;
        // A renewal is checked against the store: a removed node gets nothing, a demoted
        // manager only a worker certificate (the role is the node's current one).
        let caller = if req.get_ref().token.is_empty() {
            crate::api::caller(&req, &self.store.read())?
        } else {
            None
        };
        let msg = req.into_inner();

        if !msg.token.is_empty() {
            return self.join(msg, &cluster_id, &root, &signer, validity).await;
        }

        // Renewal: the caller's own certificate authenticates it.
        let (id, role) = caller
            .filter(|(id, _)| id.cluster_id == cluster_id)
            .ok_or_else(|| {
                Status::unauthenticated("a join token or a valid node certificate is required")
            })?;
        let certificate = signer.sign(&msg.csr, &id.node_id, role, &cluster_id, validity)?;
        // What root rotation follows: the node's certificate now comes from this issuer.
        let tls_info = signer.tls_info.clone();
        self.store
            .update_node(&id.node_id, |n| {
                n.description.get_or_insert_with(Default::default).tls_info =
                    Some(tls_info.clone());
            })
            .await
            .map_err(propose_status)?;
        tracing::info!(node = %id.node_id, role = ?role, "renewed node certificate");
        Ok(IssueNodeCertificateResponse {
            node_id: id.node_id,
            role: role as i32,
            certificate,
            root_ca: signer.tls_info.trust_root,
            cluster_id,
        })
    }

    async fn join(
        &self,
        msg: IssueNodeCertificateRequest,
        cluster_id: &str,
        root: &proto::RootCa,
        signer: &Signer,
        validity: Duration,
    ) -> Result<IssueNodeCertificateResponse, Status> {
        parse_join_token(&msg.token).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let tokens = root.join_tokens.clone().unwrap_or_default();
        // Both comparisons always run, so timing does not tell which one matched.
        let is_worker = !tokens.worker.is_empty() && tokens_equal(&msg.token, &tokens.worker);
        let is_manager = !tokens.manager.is_empty() && tokens_equal(&msg.token, &tokens.manager);
        let role = match (is_worker, is_manager) {
            (_, true) => NodeRole::Manager,
            (true, false) => NodeRole::Worker,
            (false, false) => return Err(Status::unauthenticated("invalid join token")),
        };
        let node_id = new_id();
        // Sign first: a bad CSR must not leave a node object behind.
        let certificate = signer.sign(&msg.csr, &node_id, role, cluster_id, validity)?;
        let mut description = msg.description.unwrap_or_default();
        description.tls_info = Some(signer.tls_info.clone());
        let node = proto::Node {
            id: node_id.clone(),
            meta: None,
            spec: Some(proto::NodeSpec {
                labels: Default::default(),
                desired_role: role as i32,
                availability: proto::NodeAvailability::Active as i32,
            }),
            description: Some(description),
            status: Some(proto::NodeStatus {
                state: proto::NodeState::Unknown as i32,
                ..Default::default()
            }),
            manager_status: (role == NodeRole::Manager).then(|| proto::ManagerStatus {
                addr: msg.advertise_addr.clone(),
                raft_id: 0,
                ..Default::default()
            }),
            role: role as i32,
            attachments: vec![],
            port_conflicts: vec![],
        };
        self.store
            .write(vec![Op::Create(Object::Node(node))])
            .await
            .map_err(propose_status)?;
        tracing::info!(node = %node_id, role = ?role, "node joined the swarm");
        Ok(IssueNodeCertificateResponse {
            node_id,
            role: role as i32,
            certificate,
            root_ca: signer.tls_info.trust_root.clone(),
            cluster_id: cluster_id.to_string(),
        })
    }
}

/// The root that signs node certificates now, what follows the leaf, and the TLS
/// information a node holding such a certificate has.
struct Signer {
    root: RootCa,
    /// The cross-signed new root during a rotation, else empty.
    chain: String,
    tls_info: proto::NodeTlsInfo,
}

impl Signer {
    fn of(root: &proto::RootCa) -> Result<Signer, Status> {
        let unusable = |e: crate::ca::CaError| {
            Status::internal(format!("the cluster root CA is unusable: {e}"))
        };
        let (signer, chain) = signing_root(root).map_err(unusable)?;
        let issuer = issuer_info_of_ca(&signer.cert_pem).map_err(unusable)?;
        Ok(Signer {
            tls_info: proto::NodeTlsInfo {
                trust_root: trust_bundle(root),
                cert_issuer_subject: issuer.subject,
                cert_issuer_public_key: issuer.public_key,
            },
            root: signer,
            chain,
        })
    }

    /// The node certificate followed by the chain to the roots nodes trust.
    fn sign(
        &self,
        csr: &str,
        node_id: &str,
        role: NodeRole,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<String, Status> {
        let leaf = self
            .root
            .sign_node_cert(csr, node_id, role, cluster_id, validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(format!("{leaf}{}", self.chain))
    }
}

fn no_cluster() -> Status {
    Status::unavailable(
        "this manager has no cluster yet (the swarm is not initialized or the store is still loading); retry in a moment",
    )
}

#[tonic::async_trait]
impl proto::ca_server::Ca for CaService {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let state = self.store.read();
        let cluster = state.cluster().ok_or_else(no_cluster)?;
        let certificate = cluster
            .root_ca
            .as_ref()
            .map(|r| r.ca_cert.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(no_cluster)?;
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }
}

#[tonic::async_trait]
impl proto::node_ca_server::NodeCa for CaService {
    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        match self.router.route() {
            Route::Local => self.issue_local(req).await.map(Response::new),
            Route::NoLeader => Err(no_leader()),
            Route::Stopped(reason) => Err(crate::router::raft_stopped(&reason)),
            Route::Leader(ch) => {
                // A renewal without a certificate cannot succeed anywhere: refuse it here
                // rather than forward an anonymous call.
                if req.get_ref().token.is_empty() && tls::caller_identity(&req).is_none() {
                    return Err(Status::unauthenticated(
                        "a join token or a valid node certificate is required",
                    ));
                }
                proto::node_ca_client::NodeCaClient::new(ch)
                    .issue_node_certificate(tls::forwarded_request(req))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests;
