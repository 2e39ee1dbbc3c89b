//! The connection to containerd: a lazily connected tonic channel over its unix socket, and the
//! request headers every call needs (`containerd-namespace`, and `containerd-lease` while
//! pulling).

use std::path::{Path, PathBuf};

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

/// Errors of the containerd executor. Messages name the object and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd socket {socket}: {message}; is containerd running and is the socket path right?")]
    Connect { socket: PathBuf, message: String },

    #[error("containerd {call}: {code:?}: {message}")]
    Rpc {
        call: String,
        code: tonic::Code,
        message: String,
    },

    #[error("pulling image {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: Box<swarm_oci::OciError>,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ContainerdError {
    pub fn rpc(call: impl Into<String>, status: tonic::Status) -> Self {
        ContainerdError::Rpc {
            call: call.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerdError::Rpc {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            ContainerdError::Rpc {
                code: tonic::Code::AlreadyExists,
                ..
            }
        )
    }
}

/// A containerd connection bound to one namespace. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Containerd {
    /// A channel that connects on first use (and reconnects if containerd restarts).
    pub fn lazy(socket: &Path, namespace: &str) -> Result<Containerd, ContainerdError> {
        if namespace.is_empty() || MetadataValue::try_from(namespace).is_err() {
            return Err(ContainerdError::Invalid(format!(
                "containerd namespace {namespace:?} is not a valid name"
            )));
        }
        let path = socket.to_path_buf();
        let endpoint =
            Endpoint::try_from("http://[::]:50051").map_err(|e| ContainerdError::Connect {
                socket: socket.to_path_buf(),
                message: e.to_string(),
            })?;
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }));
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            socket: socket.to_path_buf(),
        })
    }

    /// Connects and checks that containerd answers (Version service).
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, ContainerdError> {
        let c = Containerd::lazy(socket, namespace)?;
        c.check().await?;
        Ok(c)
    }

    /// Calls Version; returns containerd's version string.
    pub async fn check(&self) -> Result<String, ContainerdError> {
        let resp = VersionClient::new(self.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(|s| ContainerdError::Connect {
                socket: self.socket.clone(),
                message: format!("{:?}: {}", s.code(), s.message()),
            })?;
        Ok(resp.into_inner().version)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request carrying the namespace header.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            req.metadata_mut().insert("containerd-namespace", v);
        }
        req
    }

    /// A request carrying the namespace and lease headers (content and snapshots created under
    /// a lease are kept from garbage collection until the lease is deleted). An empty lease
    /// adds no header.
    pub fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.req(msg);
        if lease.is_empty() {
            return req;
        }
        if let Ok(v) = MetadataValue::try_from(lease) {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}
