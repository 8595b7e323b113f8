//! Micro-benchmarks of the request path's own steps. `cargo bench --bench micro`.
//!
//! `pick`: one algorithm picking from 3, 100 and 1,000 idle servers, as a pool tier does.
//! `claim`: the whole per-request cost of balancing: pick, count the request in flight, tell
//! the algorithm, and release the server again when the request ends.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::pool::{balancer, PickRequest, PoolSnapshot, Server};
use gatehouse::settings::{Balance, HashKey};

const SIZES: [usize; 3] = [3, 100, 1_000];

const ALGORITHMS: [(Balance, &str); 6] = [
    (Balance::RoundRobin, "round_robin"),
    (Balance::LeastConnections, "least_connections"),
    (Balance::LeastTime, "least_time"),
    (Balance::RandomTwo, "random_two"),
    (Balance::Random, "random"),
    (Balance::Hash, "hash"),
];

/// `n` servers with weights 1 to 4, so weighted paths are exercised.
fn servers(n: usize) -> Vec<Arc<Server>> {
    (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256);
            Arc::new(Server::new(&address, 1 + (i % 4) as u32).unwrap())
        })
        .collect()
}

/// Hash keys the benchmarks cycle through, so every pick hashes a different key.
fn keys() -> Vec<Vec<u8>> {
    (0..1_024)
        .map(|i| format!("session-{i:08}").into_bytes())
        .collect()
}

fn pick(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("pick");
    for (balance, name) in ALGORITHMS {
        for n in SIZES {
            let servers = servers(n);
            let balancer = balancer(balance, &servers);
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) % keys.len();
                    let request = PickRequest {
                        key: Some(&keys[next]),
                        avoid: &[],
                    };
                    black_box(balancer.pick(&servers, black_box(&request)))
                })
            });
        }
    }
    group.finish();
}

fn claim(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("claim");
    for (balance, name) in ALGORITHMS {
        for n in SIZES {
            let key = (balance == Balance::Hash).then_some(&HashKey::ClientIp);
            let snapshot = Arc::new(PoolSnapshot::new("bench".into(), balance, key, servers(n)));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) % keys.len();
                    let request = PickRequest {
                        key: Some(&keys[next]),
                        avoid: &[],
                    };
                    drop(black_box(snapshot.pick_for(black_box(&request))))
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick, claim
}
criterion_main!(micro);
