//! Connection to the agent's unix socket (gRPC without TLS) and the lookups several
//! commands share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use proto::control_client::ControlClient;
use proto::local_node_client::LocalNodeClient;
use proto::*;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::{CliError, Result};

pub const DEFAULT_HOST: &str = "unix:///run/swarm/swarm.sock";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket path of a `-H` value: `unix:///path` (or a bare absolute path).
pub fn socket_path(host: &str) -> Result<PathBuf> {
    if let Some(p) = host.strip_prefix("unix://") {
        if p.is_empty() {
            return Err(CliError::msg(format!(
                "invalid host {host:?}: expected unix:///path/to/socket"
            )));
        }
        return Ok(PathBuf::from(p));
    }
    if host.starts_with('/') {
        return Ok(PathBuf::from(host));
    }
    Err(CliError::msg(format!(
        "unsupported host {host:?}: only unix:// sockets are supported (e.g. {DEFAULT_HOST})"
    )))
}

fn cannot_connect(host: &str) -> CliError {
    CliError::raw(format!(
        "Cannot connect to the swarm agent at {host}: is swarm-agent running?"
    ))
}

/// Both services of the agent socket.
#[derive(Clone)]
pub struct Client {
    pub host: String,
    pub local: LocalNodeClient<Channel>,
    pub control: ControlClient<Channel>,
}

impl Client {
    pub async fn connect(host: &str) -> Result<Client> {
        let path = socket_path(host)?;
        let endpoint = Endpoint::try_from("http://localhost")
            .map_err(|e| CliError::msg(format!("invalid endpoint: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|_| cannot_connect(host))?;
        Ok(Client {
            host: host.to_string(),
            local: LocalNodeClient::new(channel.clone()),
            control: ControlClient::new(channel),
        })
    }

    /// Maps a failed call: a dropped connection is reported like a refused one.
    pub fn err(&self, s: tonic::Status) -> CliError {
        if s.code() == Code::Unavailable && s.message().contains("transport") {
            return cannot_connect(&self.host);
        }
        CliError::daemon(&s)
    }

    pub async fn info(&self) -> Result<InfoResponse> {
        self.local
            .clone()
            .info(InfoRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.err(s))
    }

    /// A service by id, id prefix or name; NotFound becomes "No such service: X".
    pub async fn service(&self, reference: &str) -> Result<Service> {
        self.control
            .clone()
            .get_service(GetServiceRequest {
                service_id: reference.to_string(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                if s.code() == Code::NotFound {
                    CliError::msg(format!("No such service: {reference}"))
                } else {
                    self.err(s)
                }
            })
    }

    /// A node by id, id prefix or hostname; NotFound becomes "No such node: X".
    pub async fn node(&self, reference: &str) -> Result<Node> {
        self.control
            .clone()
            .get_node(GetNodeRequest {
                node_id: reference.to_string(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                if s.code() == Code::NotFound {
                    CliError::msg(format!("No such node: {reference}"))
                } else {
                    self.err(s)
                }
            })
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.control
            .clone()
            .list_nodes(ListNodesRequest {})
            .await
            .map(|r| r.into_inner().nodes)
            .map_err(|s| self.err(s))
    }

    pub async fn services(&self) -> Result<Vec<Service>> {
        self.control
            .clone()
            .list_services(ListServicesRequest::default())
            .await
            .map(|r| r.into_inner().services)
            .map_err(|s| self.err(s))
    }

    /// Each service's task counts (`service ls`'s REPLICAS), by service id: counted by the
    /// managers, so no list of every task crosses the wire.
    pub async fn service_statuses(&self) -> Result<HashMap<String, ServiceStatus>> {
        let r = self
            .control
            .clone()
            .list_services(ListServicesRequest { status: true })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(r.services
            .into_iter()
            .map(|s| s.id)
            .zip(r.statuses)
            .collect())
    }

    pub async fn tasks(&self, req: ListTasksRequest) -> Result<Vec<Task>> {
        self.control
            .clone()
            .list_tasks(req)
            .await
            .map(|r| r.into_inner().tasks)
            .map_err(|s| self.err(s))
    }

    pub async fn cluster(&self) -> Result<Cluster> {
        self.control
            .clone()
            .get_cluster(GetClusterRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.err(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            socket_path("unix:///run/swarm/swarm.sock"),
            Ok(PathBuf::from("/run/swarm/swarm.sock"))
        );
        assert_eq!(socket_path("/tmp/s.sock"), Ok(PathBuf::from("/tmp/s.sock")));
        assert!(socket_path("tcp://1.2.3.4:2375").is_err());
        assert!(socket_path("unix://").is_err());
    }

    #[tokio::test]
    async fn missing_socket_gives_docker_like_message() {
        let dir = std::env::temp_dir().join(format!("swarm-cli-test-{}", std::process::id()));
        let host = format!("unix://{}/nope.sock", dir.display());
        let err = Client::connect(&host).await.err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some(format!(
                "Cannot connect to the swarm agent at {host}: is swarm-agent running?"
            ))
        );
    }
}
