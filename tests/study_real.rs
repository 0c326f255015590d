//! `hyperplane study --real` with a few environments: both designs measured
//! through the real gateway. Root only.

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn both_designs_connect_every_environment_and_use_the_addresses_they_should() {
    netlab::require_root();
    let r = hyperplane::study_real::run(5, 0).expect("runs");
    assert_eq!((r.per_env.connected, r.shared.connected), (5, 5), "{r:#?}");
    assert_eq!((r.per_env.enis_created, r.per_env.peak_addresses), (5, 5), "one ENI and address per environment");
    assert_eq!((r.shared.enis_created, r.shared.peak_addresses), (1, 1), "one for the one (subnet, groups) key");
    assert!(r.per_env.cold_start_latency.p50_s > r.shared.cold_start_latency.p50_s, "{r:#?}");
    let dir = std::env::temp_dir().join(format!("hp-study-{}", std::process::id()));
    let files = hyperplane::study_real::write(&r, &dir).expect("writes");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(json["shared"]["enis_created"], 1);
    assert!(std::fs::read_to_string(&files[1]).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(dir);
}
