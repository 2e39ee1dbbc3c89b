//! The agent's end of `Dispatcher.NetworkState`: every message goes into the node's
//! [`ViewHandle`] until the stream ends.

use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use proto::dispatcher_client::DispatcherClient;
use proto::NetworkStateRequest;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::view::ViewHandle;

/// Why [`follow`] returned.
#[derive(Debug)]
pub enum StreamEnd {
    /// The manager does not serve network state (an older version answered
    /// `Unimplemented`): the session goes on without it.
    Unsupported(String),
    /// The stream failed (`Some`) or was closed by the manager (`None`): the session ends
    /// and a new one starts with a COMPLETE message.
    Ended(Option<Status>),
}

/// Opens the node's network state stream for `session_id` and applies every message to
/// `view`, adding each message's encoded size to `received` (what the managers sent this
/// node: `Agent::network_state_bytes`).
pub async fn follow(
    mut client: DispatcherClient<Channel>,
    session_id: String,
    view: &ViewHandle,
    received: &AtomicU64,
) -> StreamEnd {
    let mut stream = match client
        .network_state(NetworkStateRequest { session_id })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(st) if st.code() == Code::Unimplemented => {
            return StreamEnd::Unsupported(st.message().to_string())
        }
        Err(st) => return StreamEnd::Ended(Some(st)),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                received.fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
                view.apply(m)
            }
            Ok(None) => return StreamEnd::Ended(None),
            Err(st) => return StreamEnd::Ended(Some(st)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::Stream;
    use proto::dispatcher_server::{Dispatcher, DispatcherServer};
    use proto::network_state_change::Change;
    use proto::*;
    use tonic::{Request, Response};

    use super::*;

    /// A dispatcher whose NetworkState either is unimplemented or sends `script`.
    struct Fake {
        script: Option<Vec<Result<NetworkStateMessage, Status>>>,
    }

    type S<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Dispatcher for Fake {
        type SessionStream = S<SessionMessage>;
        type AssignmentsStream = S<AssignmentsMessage>;
        type NetworkStateStream = S<NetworkStateMessage>;
        async fn session(
            &self,
            _: Request<SessionRequest>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            Err(Status::unimplemented("session"))
        }
        async fn heartbeat(
            &self,
            _: Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatResponse>, Status> {
            Err(Status::unimplemented("heartbeat"))
        }
        async fn assignments(
            &self,
            _: Request<AssignmentsRequest>,
        ) -> Result<Response<Self::AssignmentsStream>, Status> {
            Err(Status::unimplemented("assignments"))
        }
        async fn network_state(
            &self,
            req: Request<NetworkStateRequest>,
        ) -> Result<Response<Self::NetworkStateStream>, Status> {
            assert_eq!(req.into_inner().session_id, "sess");
            match &self.script {
                None => Err(Status::unimplemented("not here")),
                Some(items) => Ok(Response::new(Box::pin(futures::stream::iter(
                    items.clone(),
                )))),
            }
        }
        async fn update_task_status(
            &self,
            _: Request<UpdateTaskStatusRequest>,
        ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
            Err(Status::unimplemented("status"))
        }
    }

    async fn client(fake: Fake) -> DispatcherClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatcherServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let ch = tonic::transport::Endpoint::try_from(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        DispatcherClient::new(ch)
    }

    fn msg(kind: network_state_message::Type, changes: Vec<Change>) -> NetworkStateMessage {
        NetworkStateMessage {
            r#type: kind as i32,
            changes: changes
                .into_iter()
                .map(|c| NetworkStateChange { change: Some(c) })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn messages_fill_the_view_and_are_counted_until_the_stream_fails() {
        use network_state_message::Type;
        let net = NetworkInfo {
            id: "n1".into(),
            name: "front".into(),
            ..Default::default()
        };
        let ep = EndpointInfo {
            task_id: "t1".into(),
            network_id: "n1".into(),
            address: "10.0.1.3".into(),
            ..Default::default()
        };
        let c = client(Fake {
            script: Some(vec![
                Ok(msg(Type::Complete, vec![Change::Network(net.clone())])),
                Ok(msg(Type::Incremental, vec![Change::Endpoint(ep.clone())])),
                Err(Status::unavailable("session ended; reconnect")),
            ]),
        })
        .await;
        let view = ViewHandle::default();
        let received = AtomicU64::new(0);
        let end = follow(c, "sess".into(), &view, &received).await;
        assert!(
            matches!(&end, StreamEnd::Ended(Some(s)) if s.code() == Code::Unavailable),
            "{end:?}"
        );
        let sent: u64 = [
            msg(Type::Complete, vec![Change::Network(net.clone())]),
            msg(Type::Incremental, vec![Change::Endpoint(ep.clone())]),
        ]
        .iter()
        .map(|m| m.encoded_len() as u64)
        .sum();
        assert_eq!(
            received.load(Ordering::Relaxed),
            sent,
            "every message counted"
        );
        let v = view.current();
        assert!(v.complete);
        assert_eq!(v.generation, 2);
        assert_eq!(v.networks["n1"].name, "front");
        assert_eq!(v.endpoints_on("n1").count(), 1);
    }

    #[tokio::test]
    async fn an_old_manager_is_unsupported_not_an_error() {
        let c = client(Fake { script: None }).await;
        let view = ViewHandle::default();
        let end = follow(c, "sess".into(), &view, &AtomicU64::new(0)).await;
        assert!(matches!(end, StreamEnd::Unsupported(_)), "{end:?}");
        assert!(!view.current().complete, "the view is left as it was");
    }
}
