//! `/metrics` in Prometheus text format.

use std::net::SocketAddr;

use axum::routing::get;

pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                swarm_common::metrics::encode(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
