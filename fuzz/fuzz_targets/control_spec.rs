//! Control API requests past authorization (the local socket's caller) over an in-memory
//! store: CreateService, UpdateService, CreateNetwork, CreateSecret and CreateConfig decoded
//! from protobuf bytes (the first byte picks the call), validated (`control/validate.rs`) and
//! applied. Checks: no panic; a refused call writes nothing; an accepted create is stored
//! under the name it asked for (a generated one when it asked for none).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::control_server::Control;
use proto::*;
use swarm_manager::api::LocalCaller;
use swarm_manager::control::ControlApi;
use swarm_manager::router::Router;
use swarm_manager::store::Store;
use tonic::Request;

fn local<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(LocalCaller);
    r
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// A store with one service (`web`) and one network (`front`) for updates and references.
async fn fixture() -> (ControlApi, Store, Service) {
    let store = Store::memory();
    let api = ControlApi::new(store.clone(), Router::local());
    let spec = ServiceSpec {
        name: "web".into(),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "nginx:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_network(local(CreateNetworkRequest {
        spec: Some(NetworkSpec {
            name: "front".into(),
            ..Default::default()
        }),
    }))
    .await
    .expect("the fixture's network");
    let web = api
        .create_service(local(CreateServiceRequest { spec: Some(spec) }))
        .await
        .expect("the fixture's service")
        .into_inner();
    (api, store, web)
}

async fn one(sel: u8, body: &[u8]) {
    let (api, store, web) = fixture().await;
    let before = store.shared().applied_index();
    let created: Result<String, tonic::Status> = match sel % 5 {
        0 => {
            let Ok(req) = CreateServiceRequest::decode(body) else {
                return;
            };
            let name = req.spec.as_ref().map(|s| s.name.clone());
            api.create_service(local(req)).await.map(|r| {
                let s = r.into_inner();
                let stored = s.spec.map(|s| s.name);
                match name.as_deref() {
                    // No name asked for: the service gets a generated one, as in Docker.
                    None | Some("") => assert!(
                        stored.as_deref().is_some_and(|n| !n.is_empty()),
                        "a service created without a name was given none"
                    ),
                    Some(_) => assert_eq!(stored, name, "created under another name"),
                }
                s.id
            })
        }
        1 => {
            let Ok(mut req) = UpdateServiceRequest::decode(body) else {
                return;
            };
            if req.service_id.is_empty() {
                req.service_id = web.id.clone();
                req.service_version = web.meta.as_ref().map_or(0, |m| m.version);
            }
            api.update_service(local(req))
                .await
                .map(|r| r.into_inner().id)
        }
        2 => {
            let Ok(req) = CreateNetworkRequest::decode(body) else {
                return;
            };
            api.create_network(local(req))
                .await
                .map(|r| r.into_inner().id)
        }
        3 => {
            let Ok(req) = CreateSecretRequest::decode(body) else {
                return;
            };
            api.create_secret(local(req))
                .await
                .map(|r| r.into_inner().id)
        }
        _ => {
            let Ok(req) = CreateConfigRequest::decode(body) else {
                return;
            };
            api.create_config(local(req))
                .await
                .map(|r| r.into_inner().id)
        }
    };
    match created {
        Ok(id) => assert!(!id.is_empty(), "an accepted call answered no object"),
        Err(status) => {
            assert_eq!(
                store.shared().applied_index(),
                before,
                "a refused call ({status:?}) wrote to the store"
            );
            assert!(!status.message().is_empty(), "a refusal without a message");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    runtime().block_on(one(sel, body));
});
