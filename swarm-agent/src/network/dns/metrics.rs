//! Prometheus metrics of the embedded DNS server, in the process's registry
//! (`swarm_common::metrics`): `swarm_dns_queries_total{result}` and
//! `swarm_dns_forward_seconds{result}`.
//!
//! The serving loops hold the counters of each result directly (no label lookup, no lock,
//! no allocation per query).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryResult {
    /// `local` (records), `nodata` (known name, no record of that type), `nxdomain`,
    /// `forwarded` (an upstream's answer relayed), `forward_error` (SERVFAIL: no upstream,
    /// none answered, too many forwards in flight), `formerr` (malformed, not implemented).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardResult {
    /// `answered` or `failed`.
    pub result: String,
}

pub struct DnsMetrics {
    pub local: Counter,
    pub nodata: Counter,
    pub nxdomain: Counter,
    pub forwarded: Counter,
    pub forward_error: Counter,
    pub formerr: Counter,
    pub forward_answered: Histogram,
    pub forward_failed: Histogram,
}

fn buckets() -> Histogram {
    // 100 µs … ~13 s (the 4 s timeout per upstream, three upstreams)
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub static METRICS: LazyLock<DnsMetrics> = LazyLock::new(|| {
    let queries: Family<QueryResult, Counter> = Family::default();
    let forward: Family<ForwardResult, Histogram, fn() -> Histogram> =
        Family::new_with_constructor(buckets);
    let q = |r: &str| {
        queries
            .get_or_create(&QueryResult {
                result: r.to_string(),
            })
            .clone()
    };
    let f = |r: &str| {
        forward
            .get_or_create(&ForwardResult {
                result: r.to_string(),
            })
            .clone()
    };
    let m = DnsMetrics {
        local: q("local"),
        nodata: q("nodata"),
        nxdomain: q("nxdomain"),
        forwarded: q("forwarded"),
        forward_error: q("forward_error"),
        formerr: q("formerr"),
        forward_answered: f("answered"),
        forward_failed: f("failed"),
    };
    swarm_common::metrics::register(
        "dns_queries",
        "Queries to the embedded DNS server by result",
        queries,
    );
    swarm_common::metrics::register(
        "dns_forward_seconds",
        "Time to get an answer from the node's resolvers (all upstreams tried)",
        forward,
    );
    m
});
