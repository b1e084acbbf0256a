//! `berth plan` and the fit check every deploy runs, against the real agent's sample of this
//! machine: a manifest that fits, one that fits only outside a deploy (the old release's
//! replicas beside the new ones), and one that does not fit at all.

use crate::harness::{Agent, web};
use std::time::{Duration, Instant};

fn memory_total(agent: &Agent) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let top = agent.berth(&["top", "--json"]);
        if top.code == 0
            && let Some(total) = top.json()["host"]["memory_total_bytes"].as_u64()
            && total > 0
        {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never sampled the host"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `memory` of each replica as a share of the machine's memory, in MiB.
fn share(total: u64, fraction: f64) -> String {
    format!("{}m", ((total as f64 * fraction) as u64) >> 20)
}

#[test]
fn plan_says_what_fits_and_deploy_refuses_what_does_not() {
    let agent = Agent::start();
    let total = memory_total(&agent);
    let app = agent.app("plan");

    // Small: fits.
    app.write(&(web("") + "memory = \"64m\"\n"));
    let small = agent.berth_in(app.path(), &["plan", "--json"]);
    small.success();
    let small = small.json();
    assert_eq!(small["plan"]["verdict"], "fits", "{small:#}");
    assert_eq!(small["plan"]["memory_total"].as_u64(), Some(total));

    // Bigger than the machine: refused by plan and by deploy, and nothing is started.
    app.write(&(web("") + &format!("memory = \"{}\"\n", share(total, 1.2))));
    let huge = agent.berth_in(app.path(), &["plan", "--json"]);
    huge.failure(1);
    assert_eq!(huge.json()["plan"]["verdict"], "does_not_fit");
    let refused = agent.berth_in(app.path(), &["deploy", "--version", "v0"]);
    refused.failure(1);
    assert!(
        refused.stderr.contains("does not fit on the server"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    let releases = agent.berth_in(app.path(), &["releases", "--json"]);
    assert!(
        releases.code != 0 || releases.json().as_array().is_none_or(|r| r.is_empty()),
        "a refused deploy recorded a release: {}",
        releases.stdout
    );

    // Two replicas of a quarter of the machine each: fits deployed, but a redeploy would run
    // four side by side.
    let quarter = format!("memory = \"{}\"\nreplicas = 2\n", share(total, 0.26));
    app.write(&(web("") + &quarter));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    agent.wait_serving("hello");
    // The plan counts what runs once the agent has sampled the new containers.
    let deadline = Instant::now() + Duration::from_secs(40);
    let plan = loop {
        let plan = agent.berth_in(app.path(), &["plan", "--json"]);
        let json = plan.json();
        if json["plan"]["running_now"].as_u64().unwrap_or(0) > 0 {
            break (plan.code, json);
        }
        assert!(
            Instant::now() < deadline,
            "the app's containers never showed in the plan: {json:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(plan.0, 1, "{:#}", plan.1);
    assert_eq!(
        plan.1["plan"]["verdict"], "fits_only_outside_deploy",
        "{:#}",
        plan.1
    );
    let refused = agent.berth_in(app.path(), &["deploy", "--version", "v2"]);
    refused.failure(1);
    assert!(refused.stderr.contains("old release"), "{}", refused.stderr);
    let text = agent.berth_in(app.path(), &["plan"]);
    assert!(
        text.stdout
            .contains("not while the old release runs beside the new one"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("web × 2"), "{}", text.stdout);

    let forced = agent.berth_in(app.path(), &["deploy", "--version", "v2", "--force"]);
    forced.success();
    assert!(
        forced.stderr.contains("deploying anyway"),
        "{}",
        forced.stderr
    );
}

#[test]
fn a_domain_that_does_not_point_here_is_named_by_plan_and_deploy() {
    let agent = Agent::start_with(&[], &["--https", "127.0.0.1:0"]);
    memory_total(&agent);
    let app = agent.app("dns");
    app.write(&web("").replace(
        "route = { domains = [] }",
        "route = { domains = [\"nowhere.berth-test.invalid\"] }",
    ));
    let plan = agent.berth_in(app.path(), &["plan", "--json"]);
    plan.success();
    let plan = plan.json();
    assert_eq!(
        plan["domains"][0]["domain"], "nowhere.berth-test.invalid",
        "{plan:#}"
    );
    assert_eq!(plan["domains"][0]["ok"], false, "{plan:#}");
    let deployed = agent.berth_in(app.path(), &["deploy", "--version", "v1"]);
    deployed.success();
    assert!(
        deployed
            .stderr
            .contains("nowhere.berth-test.invalid: does not resolve"),
        "{}",
        deployed.stderr
    );
}
