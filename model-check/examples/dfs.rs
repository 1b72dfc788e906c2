//! Depth-first hunt for a counterexample in a configuration given on the
//! command line as the setup model with writes, a cut and a disaster
//! promotion (`cargo run --release --example dfs -- SECONDS`).

use stateright::{Checker, HasDiscoveries, Model};
use std::time::Duration;
use vcodr_model_check::model::*;
use vcodr_model_check::report::render_path;

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(60);
    let cfg = ModelCfg {
        writes: 1,
        promotions: 1,
        planned: false,
        cuts: 1,
        peer_ticks: Some(2),
        durability: Durability::Sync,
        ..ModelCfg::setup()
    };
    let model = DrModel::new(cfg);
    let c = model
        .clone()
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .timeout(Duration::from_secs(secs))
        .spawn_dfs()
        .join();
    println!("states {}", c.unique_state_count());
    for p in model.properties() {
        if p.expectation == stateright::Expectation::Always {
            if let Some(path) = c.discovery(p.name) {
                println!("VIOLATED {}", p.name);
                for l in render_path(&model, path.into_vec()) {
                    println!("{l}");
                }
            }
        }
    }
}
