use super::*;

#[test]
fn bars_are_dockers() {
    assert_eq!(
        bar(1, 2),
        format!("[{}>{}] 1/2 nodes", "=".repeat(25), " ".repeat(25))
    );
    assert_eq!(bar(0, 5), format!("[>{}] 0/5 nodes", " ".repeat(50)));
    assert_eq!(bar(3, 3), format!("[{}>] 3/3 nodes", "=".repeat(50)));
}

#[test]
fn cluster_settings_in_info() {
    let c = Cluster {
        spec: Some(ClusterSpec {
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: 7,
            }),
            dispatcher: Some(DispatcherConfig {
                heartbeat_period_ms: 10_000,
            }),
            ca_config: Some(CaConfig {
                node_cert_expiry_ms: 48 * 3600 * 1000,
                force_rotate: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        cluster_info_text(&c),
        " Orchestration:\n  Task History Retention Limit: 7\n Dispatcher:\n  Heartbeat Period: 10 seconds\n CA Configuration:\n  Expiry Duration: 2 days\n  Force Rotate: 2\n Root Rotation In Progress: false\n"
    );
}
