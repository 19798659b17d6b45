//! Deterministic simulation of the whole switch, in the manner of
//! TigerBeetle's VOPR: the terminal, link and store-and-forward cores, the
//! simulator's host rules and an in-memory journal are wired together in
//! one thread and stepped in virtual time under a seeded schedule of
//! faults (answers dropped, delayed past the timeout, duplicated and
//! reordered; links cut; sign-ons refused; terminals hanging up; the
//! switch crashing and recovering from what its journal had made durable).
//! After each run [`checks`] verifies what the switch promises: every
//! request ends in exactly one outcome, nothing is both approved to the
//! terminal and reversed upstream, every timed-out forward is reversed, and
//! nothing the host approved is lost without a reversal.
//!
//! A failing seed is printed with the command that replays it alone
//! (`SIM_SEED=n`). Two tests: a hundred seeds with every other unit test,
//! and 10,000 seeds that `scripts/test` runs optimised with every debug
//! assertion on (`cargo test --profile sim --lib simulation -- --ignored
//! --nocapture`, under a minute). A longer run is the same command with
//! `SIM_SEEDS=1000000` (and `SIM_FIRST_SEED` to start elsewhere).

mod checks;
mod host;
mod world;

use std::time::Instant;

use world::{Stats, World};

/// Runs one seed; `Err` names the first broken promise.
fn run_seed(seed: u64, base: Instant) -> Result<Stats, String> {
    let mut world = World::new(seed, base);
    world.run()?;
    if let Err(why) = checks::verify(&world) {
        if std::env::var("SIM_SEED").is_ok() {
            world.dump();
        }
        return Err(why);
    }
    Ok(world.stats)
}

#[test]
fn a_hundred_seeds_keep_every_promise() {
    run_seeds(100);
}

#[test]
#[ignore = "10,000 seeds: scripts/test runs them optimised, with --profile sim"]
fn ten_thousand_seeds_keep_every_promise() {
    run_seeds(10_000);
}

/// Runs `SIM_SEEDS` seeds (`default_seeds` when unset) from
/// `SIM_FIRST_SEED` (1), or the one seed `SIM_SEED`, and prints what they
/// covered.
fn run_seeds(default_seeds: u64) {
    let base = Instant::now();
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seeds);
    let first: u64 = std::env::var("SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let list: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (first..first + seeds).collect(),
    };
    let started = Instant::now();
    let mut total = Stats::default();
    for &seed in &list {
        match run_seed(seed, base) {
            Ok(s) => total.add(&s),
            Err(why) => panic!(
                "simulation seed {seed} failed: {why}\n\
                 replay it alone: SIM_SEED={seed} cargo test --lib simulation::a_hundred -- --nocapture"
            ),
        }
    }
    println!(
        "simulation: {} seeds (from {}), {} steps, {} requests, {} answers, {} host approvals, \
         {} reversals at the host, {} crashes, {} link cuts, {} answers dropped, {} late, \
         {} duplicated, in {:.1} s",
        list.len(),
        list.first().copied().unwrap_or(0),
        total.steps,
        total.requests,
        total.answers,
        total.host_approvals,
        total.host_reversals,
        total.crashes,
        total.cuts,
        total.dropped,
        total.late,
        total.duplicated,
        started.elapsed().as_secs_f64()
    );
    // The run must have exercised what it claims to.
    if only.is_none() && list.len() >= 100 {
        assert!(total.crashes > 0, "no seed crashed the switch");
        assert!(total.cuts > 0, "no seed cut a link");
        assert!(total.late > 0, "no seed delayed an answer past its timeout");
        assert!(total.host_reversals > 0, "no reversal reached the host");
    }
}
