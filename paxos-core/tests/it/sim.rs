use std::time::Duration;

use paxos_core::sim::{Sim, SimConfig};

#[test]
fn calm_cluster_elects_and_commits() {
    let mut sim = Sim::with_test_components(SimConfig {
        seed: 1,
        ..SimConfig::default()
    });
    if let Err(v) = sim.run_for(Duration::from_secs(2)) {
        panic!("{v}");
    }
    let st = sim.stats().clone();
    println!("{st:?}");
    assert!(st.leaders >= 1, "a leader must be established");
    assert!(st.acked > 100, "commands must commit: {st:?}");
}
