//! The Prometheus registry of the process (prefix `swarm`), one per process. The
//! in-process manager (`swarm_manager::metrics`) and the agent's components (executor,
//! DNS server, data plane) register their metrics here; the daemon serves [`encode`] on
//! `/metrics`.

use std::sync::{LazyLock, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("swarm")));

/// Registers a metric of a component in the process registry.
pub fn register<M: Metric>(name: &str, help: &str, metric: M) {
    REGISTRY.lock().unwrap().register(name, help, metric);
}

/// A histogram for the manager's latencies: 50 µs … ~26 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// Registers a collector (metrics read at scrape time, e.g. from eBPF maps) in the
/// process registry.
pub fn register_collector(collector: Box<dyn Collector>) {
    REGISTRY.lock().unwrap().register_collector(collector);
}

/// The registry in Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    let r = REGISTRY.lock().unwrap();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("encoding to a String");
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_metrics_are_encoded_with_the_prefix() {
        let c: Counter = Counter::default();
        register("common_test_events", "Events of the test", c.clone());
        c.inc();
        let text = encode();
        assert!(text.contains("swarm_common_test_events_total 1"), "{text}");
    }
}
